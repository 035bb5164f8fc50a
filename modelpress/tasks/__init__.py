"""The task registry: everything modelpress knows about one kind of model output, in one module.

A task module declares its modality, the transformers Auto class, the exported output, the numpy
post-processing of that output (pooling, per-word selection), the torch output export traces, its
metrics with their direction, the rule that picks the gated metric, the eval formats it reads,
the bundle API it offers, and what distillation compares and with which losses. Recipe checking,
the CLI's choices, validation, the gate, the bundle and distillation ask the registry; nothing
outside the task modules branches on a task's name.

A task is a frozen dataclass whose fields are its ``[task_options]`` (typed, and checked by the one
config checker, ``modelpress.config_check``); an instance is a configured
task (for feature extraction: its pooling and normalization), stored in ``bundle.json`` by
:meth:`Task.describe` and rebuilt by :func:`task_from_dict`.

Adding a task is one module that subclasses :class:`Task` and one line here::

    TASKS.register("image-classification", "modelpress.tasks.image_classification:ImageClassification")
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from modelpress import task_match
from modelpress.config_check import check_fields, checked_fields
from modelpress.errors import BadInputError
from modelpress.registry import Registry
from modelpress.bundle_base import Bundle
from modelpress.tasks.evalsets import load_eval_set
from modelpress.tasks.records import EvalSet as EvalSet  # re-exported: the readers subclass it

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class DistillSpec:
    """What distillation compares for a task and with which losses (see modelpress.distill)."""

    output: str  # kind of the compared output: "embedding" | "logits" | "token_logits" | "scores"
    losses: frozenset[str]  # losses that apply
    defaults: Mapping[str, float]  # weights when the recipe sets none
    label_loss: str | None = None  # the loss switched on by gold labels (distill.label_field)


@dataclass(frozen=True)
class MetricSpec:
    """A held-out metric distillation keeps the best student by (``Task.heldout_metric``): its names,
    the per-metric sums of a batch of student and teacher outputs, and the score to maximise."""

    names: tuple[str, ...]
    sums: Callable[[Any, Any], Any]  # (student outputs, teacher outputs) -> per-metric sums over the batch
    score: Callable[[dict[str, float]], tuple[float, ...]]


def _resolve(ref: str) -> Any:
    """``"module:attribute"`` → the attribute (the registries' lazy reference)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Task:
    """Base of every task; subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    modality: ClassVar[str] = "text"
    auto_class: ClassVar[str]  # attribute of ``transformers`` that loads the model
    output_name: ClassVar[str]  # the exported graph's output
    #: every metric the task reports, with the direction in which it is better
    metrics: ClassVar[Mapping[str, str]]
    eval_formats: ClassVar[tuple[str, ...]]
    distill: ClassVar[DistillSpec]
    #: what the model's config must provide (e.g. labels) for the task's head to be meaningful
    needs_labels: ClassVar[bool] = False
    #: the record :meth:`read_eval` returns (an :class:`EvalSet`), as ``"module:Class"``
    eval_record: ClassVar[str]
    #: the batch its modality's encoder hands :meth:`postprocess` (a ``modalities.Batch``), as
    #: ``"module:Class"``: what it attaches beyond the feed (word positions, scored positions)
    batch_payload: ClassVar[str] = "modelpress.modalities:Batch"
    #: the architectures ``--task auto`` maps to this task, and its default data (modelpress.task_match)
    auto: ClassVar[task_match.AutoSpec] = task_match.AutoSpec()

    #: options that were ``[validate]`` keys until 0.x: read from there for one release (a warning)
    moved_from_validate: ClassVar[tuple[str, ...]] = ()
    #: whether its API runs the model back to back (a decode loop): a loaded bundle's runner then takes
    #: its runtime's ``Runner.back_to_back_options``
    runs_back_to_back: ClassVar[bool] = False

    # -- configuration ----------------------------------------------------------------------
    def __post_init__(self) -> None:
        check_fields(self, "task_options")  # a task built in code is held to the recipe's ranges

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The ``[task_options]`` keys this task takes (its dataclass fields, but for what a run decides:
        ``metadata={"decided": True}``, reported in ``task_config`` and never read back)."""
        return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata.get("decided"))

    def check_runtimes(self, runners: Mapping[str, Any]) -> None:
        """Refuse, in one line, an option a runtime of ``validate.runtimes`` cannot honour; ``runners``:
        name → runner class, whose class attributes say what it runs (``runtimes.base.Runner``)."""

    def for_model(self, model_config: Any, runners: Mapping[str, Any]) -> "Task":
        """This task with the options that depend on the model and the runtimes (an ``"auto"``) decided,
        and checked against them; itself by default."""
        return self

    @classmethod
    def configure(cls, options: Mapping[str, Any], model_dir: str | Path | None) -> "Task":
        """The task for a recipe's checked ``[task_options]`` and the model folder (None: hub id)."""
        return cls(**options)

    def describe(self) -> dict[str, Any]:
        """What ``bundle.json`` stores to rebuild this configured task."""
        return {"task": self.name, **dataclasses.asdict(self)}

    #: whether TensorRT engines can be built for this task's graphs (``[engine]``)
    engines: ClassVar[bool] = True

    def heldout_metric(self) -> Any:
        """Distillation's held-out student-vs-teacher metrics (:class:`MetricSpec`) when
        the standard ones of :attr:`distill`'s output kind do not fit; None: those."""
        return None

    # -- model and export -------------------------------------------------------------------
    #: the exporter that turns the model into ONNX (``modelpress.export.exporters``): "onnx" traces
    #: :meth:`torch_output` through the modality's inputs
    exporter: ClassVar[str] = "onnx"

    def torch_output(self, model_output: Any) -> Any:
        """The tensor export traces, from the transformers model's output (or a mapping of named
        tensors, for a task whose graph has several outputs)."""
        return getattr(model_output, self.output_name)

    def torch_module(self, model: Any) -> Any:
        """The module validation's PyTorch runner calls with the graph's feed (by default the model)."""
        return model

    # -- inference ----------------------------------------------------------------------------
    def prepare(self, examples: Sequence[Any]) -> list[Any]:
        """Raw user inputs → what the modality encodes (e.g. strings → word lists)."""
        return list(examples)

    def postprocess(self, outputs: Mapping[str, np.ndarray], batch: Any) -> np.ndarray | list[np.ndarray]:
        """The model's outputs → one result per example (an array with a row per example, or a
        list of arrays when results differ in size)."""
        return np.asarray(outputs[self.output_name], dtype=np.float32)

    # -- evaluation -----------------------------------------------------------------------------
    def read_eval(self, path: str | Path, cfg: Any, *, model_config: Any = None, preprocessor: Any = None) -> Any:
        """The eval set (``modelpress.tasks.evalsets.EvalSet``) in one of ``eval_formats``; ``cfg``
        is the recipe's ``[validate]``. The default reads the text formats (text, pairs, stsb)."""
        labels = getattr(model_config, "num_labels", None) if self.needs_labels else None
        return load_eval_set(
            path,
            fmt=cfg.eval_format,
            text_field=cfg.text_field,
            label_field=cfg.label_field,
            num_samples=cfg.num_samples,
            formats=self.eval_formats,
            num_labels=labels,
        )

    def eval_outputs(self, predictor: Any, es: Any, cfg: Any) -> Any:
        """What ``predictor`` gives on the eval set, for :meth:`fidelity` and :meth:`paired_units`: by
        default its results on ``es.examples`` (text-generation adds its greedy continuations of
        the eval prompts)."""
        return predictor.predict(list(es.examples), batch_size=cfg.batch_size)

    @classmethod
    def record_type(cls) -> type:
        """The class of :attr:`eval_record`."""
        return _resolve(cls.eval_record)

    @classmethod
    def payload_type(cls) -> type:
        """The class of :attr:`batch_payload`."""
        return _resolve(cls.batch_payload)

    def describe_eval(self, es: Any) -> dict[str, Any]:
        """The report's ``eval`` for the eval set ``es``."""
        return es.describe()

    @classmethod
    def eval_lines(cls, eval_desc: Mapping[str, Any]) -> list[str]:
        """report.md's lines about the eval set beyond its source and counts (none by default)."""
        return []

    @classmethod
    def extra_ratios(cls, reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> dict[str, float]:
        """Latency ratios (candidate / reference) of the timings :meth:`extra_latency` adds, from two
        models' report entries (none by default)."""
        return {}

    @classmethod
    def report_sections(cls, models: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """report.md's lines for the timings :meth:`extra_latency` adds (none by default)."""
        return []

    #: metrics reported only when an option is set: ``{metric: option}``
    conditional_metrics: ClassVar[Mapping[str, str]] = {}

    def reference_metrics(self, teacher_out: Any, es: Any) -> dict[str, float]:
        """The teacher's own values of the metrics (the reference the candidates are held to)."""
        raise NotImplementedError

    def fidelity(self, teacher_out: Any, candidate_out: Any, es: Any) -> dict[str, float]:
        raise NotImplementedError

    def reduce_outputs(self, teacher_out: Any, candidate_out: Any) -> Any:
        """``candidate_out`` with only what ``fidelity`` and ``paired_units`` read against
        ``teacher_out`` (validation keeps every model's outputs until the end): by default all of it."""
        return candidate_out

    def paired_units(self, metric: str, teacher_out: Any, candidate_out: Any, es: Any):
        """What the drop of ``metric`` is a statistic of, per resampling unit
        (``modelpress.measures.uncertainty.PairedUnits``), or None when it has no interval."""
        return None

    @classmethod
    def primary_metric(cls, available: set[str]) -> str:
        """The metric the gate judges when the recipe says ``gate.metric = "auto"``."""
        raise NotImplementedError

    #: the fewest units (the gated metric's interval's: pairs, texts, sentences, windows, ...) the
    #: gate decides on: below it the verdict is FAIL, "too small to decide", whatever the policy. A
    #: percentile bootstrap interval needs about 30 independent units before its 95 % means 95 %
    #: (fewer: it is too narrow, and a lucky draw passes); each task states its own.
    min_n: ClassVar[int] = 30

    #: options (``[task_options]`` keys) whose values are lengths the model must take
    length_keys: ClassVar[tuple[str, ...]] = ()

    def checked_lengths(self) -> dict[str, int]:
        """``{"task_options.<key>": longest input it makes}`` for :attr:`length_keys` (a decode step at
        context c feeds c + 1 positions), for ``Modality.check_lengths``."""
        return {f"task_options.{key}": max(getattr(self, key)) + 1 for key in self.length_keys}

    def with_lengths(self, fitted: Any) -> "Task":
        """This task with its :attr:`length_keys` as ``recipe.fit_lengths`` fitted them (``Fitted``)."""
        prefix = "task_options."
        changes = {k[len(prefix) :]: v for k, v in fitted.values.items() if k.startswith(prefix)}
        return dataclasses.replace(self, **changes) if changes else self

    def extra_latency(self, predictors: Sequence[Any], examples: Sequence[Any], cfg: Any) -> dict[str, dict[str, list]]:
        """Timings beyond the forward pass, per predictor: ``{name: {report key: rows}}`` (text-generation:
        the decode step, ``decode_latency``); none by default."""
        return {}

    @classmethod
    def direction(cls, metric: str) -> str:
        """ "higher" or "lower": in which direction the metric is better (unknown keys: higher)."""
        return cls.metrics.get(metric, HIGHER)

    # -- the bundle ---------------------------------------------------------------------------
    #: the bundle's API methods for this task (implemented in :attr:`bundle_class`)
    api: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def bundle_class(cls) -> type:
        return Bundle


TASKS: Registry[type[Task]] = Registry("task")
TASKS.register("feature-extraction", "modelpress.tasks.feature_extraction:FeatureExtraction")
TASKS.register("text-classification", "modelpress.tasks.text_classification:TextClassification")
TASKS.register("text-ranking", "modelpress.tasks.text_ranking:TextRanking")
TASKS.register("token-classification", "modelpress.tasks.token_classification:TokenClassification")
TASKS.register("image-classification", "modelpress.tasks.image_classification:ImageClassification")
TASKS.register("text-generation", "modelpress.tasks.text_generation:TextGeneration")


def get_task(name: str) -> type[Task]:
    return TASKS.get(name)


def task_names() -> tuple[str, ...]:
    return TASKS.names()


def configure_task(name: str, options: Mapping[str, Any] | None = None, *, model_dir: str | Path | None = None) -> Task:
    """The configured task; unknown options are an error naming ``task_options.<key>``."""
    cls = get_task(name)
    options = dict(options or {})
    known = cls.options()
    for key in options:
        if key not in known:
            raise BadInputError(f"task_options.{key}: unknown for {name} (known: {', '.join(known) or 'none'})")
    return cls.configure(checked_fields(cls, "task_options", options), model_dir)


def task_from_dict(d: Mapping[str, Any]) -> Task:
    """Rebuild a configured task from :meth:`Task.describe` (``bundle.json``)."""
    if not isinstance(d, Mapping) or "task" not in d:
        raise BadInputError("bundle metadata names no task")
    cls = get_task(str(d["task"]))
    return cls(
        **checked_fields(cls, "task_options", {k: v for k, v in d.items() if k != "task" and k in cls.options()})
    )


def _suffix_length(architecture: str, spec: task_match.AutoSpec) -> int:
    """The longest of ``spec``'s suffixes that ``architecture`` ends with (0: none)."""
    return max((len(s) for s in spec.architectures if architecture.endswith(s)), default=0)


def infer_task(model_dir: str | Path) -> tuple[str, str]:
    """(task name, the architecture it was read from) for the model folder ``model_dir``."""
    config = task_match.read_config(model_dir)
    architectures = [str(a) for a in config.get("architectures") or () if isinstance(a, str)]
    choices = ", ".join(task_names())
    if not architectures:
        raise BadInputError(
            f"{model_dir}: config.json names no architectures, so the task cannot be read from it; "
            f"give --task (one of {choices})"
        )
    best: dict[str, tuple[int, str]] = {}  # task → (suffix length, architecture)
    for name in task_names():
        spec = get_task(name).auto
        for arch in architectures:
            length = _suffix_length(arch, spec)
            if length and spec.accepts(config) and length > best.get(name, (0, ""))[0]:
                best[name] = (length, arch)
    if not best:
        raise BadInputError(f"{model_dir}: no task handles {', '.join(architectures)}; give --task (one of {choices})")
    top = max(length for length, _ in best.values())
    winners = [name for name, (length, _) in best.items() if length == top]
    if len(winners) > 1:
        raise BadInputError(
            f"{model_dir}: {', '.join(architectures)} fits several tasks ({', '.join(winners)}); give --task"
        )
    return winners[0], best[winners[0]][1]
