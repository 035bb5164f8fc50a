"""The task registry: everything modelpress knows about one kind of model output, in one module.

A task module declares its modality, the transformers Auto class, the exported output, the numpy
post-processing of that output (pooling, per-word selection), the torch output export traces, its
metrics with their direction, the rule that picks the gated metric, the eval formats it reads,
the bundle API it offers, and what distillation compares and with which losses. Recipe checking,
the CLI's choices, validation, the gate, the bundle and distillation ask the registry; nothing
outside the task modules branches on a task's name.

A task is a frozen dataclass whose fields are its ``[task_options]``; an instance is a configured
task (for feature extraction: its pooling and normalization), stored in ``bundle.json`` by
:meth:`Task.describe` and rebuilt by :func:`task_from_dict`.

Adding a task is one module that subclasses :class:`Task` and one line here::

    TASKS.register("image-classification", "modelpress.tasks.image_classification:ImageClassification")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from modelpress import task_match
from modelpress.errors import BadInputError
from modelpress.registry import Registry

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class DistillSpec:
    """What distillation compares for a task and with which losses (see modelpress.distill)."""

    output: str  # kind of the compared output: "embedding" | "logits" | "token_logits" | "scores"
    losses: frozenset[str]  # losses that apply
    defaults: Mapping[str, float]  # weights when the recipe sets none
    label_loss: str | None = None  # the loss switched on by gold labels (distill.label_field)


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
    #: the architectures ``--task auto`` maps to this task, and its default data (modelpress.task_match)
    auto: ClassVar[task_match.AutoSpec] = task_match.AutoSpec()

    # -- configuration ----------------------------------------------------------------------
    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The ``[task_options]`` keys this task takes (its dataclass fields)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def configure(cls, options: Mapping[str, Any], model_dir: str | Path | None) -> "Task":
        """The task for a recipe's checked ``[task_options]`` and the model folder (None: hub id)."""
        return cls(**options)

    def describe(self) -> dict[str, Any]:
        """What ``bundle.json`` stores to rebuild this configured task."""
        return {"task": self.name, **dataclasses.asdict(self)}

    #: whether TensorRT engines can be built for this task's graphs (``[engine]``)
    engines: ClassVar[bool] = True

    # -- model and export -------------------------------------------------------------------
    def export(self, model: Any, preprocessor: Any, out_path: str | Path, *, opset: int, atol: float) -> Any:
        """``model`` → ONNX at ``out_path``, parity-checked (``export.onnx_export.ExportResult``)."""
        from modelpress.export.onnx_export import export_onnx

        return export_onnx(model, preprocessor, out_path, task=self, opset=opset, atol=atol)

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
        """The eval set (``modelpress.validate.evalsets.EvalSet``) in one of ``eval_formats``; ``cfg``
        is the recipe's ``[validate]``. The default reads the text formats (text, pairs, stsb)."""
        from modelpress.validate.evalsets import load_eval_set

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

    #: metrics reported only when a ``[validate]`` key is set: ``{metric: key}``
    conditional_metrics: ClassVar[Mapping[str, str]] = {}

    def reference_metrics(self, teacher_out: Any, es: Any) -> dict[str, float]:
        """The teacher's own values of the metrics (the reference the candidates are held to)."""
        raise NotImplementedError

    def fidelity(self, teacher_out: Any, candidate_out: Any, es: Any) -> dict[str, float]:
        raise NotImplementedError

    def paired_units(self, metric: str, teacher_out: Any, candidate_out: Any, es: Any):
        """What the drop of ``metric`` is a statistic of, per resampling unit
        (``modelpress.validate.uncertainty.PairedUnits``), or None when it has no interval."""
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

    #: ``[validate]`` keys whose values are lengths the model must take (beyond max_length, seq_lengths)
    length_keys: ClassVar[tuple[str, ...]] = ()

    def checked_lengths(self, cfg: Any) -> dict[str, int]:
        """``{"validate.<key>": longest input it makes}`` for :attr:`length_keys` (a decode step at
        context c feeds c + 1 positions), for ``Modality.check_lengths``."""
        return {f"validate.{key}": max(getattr(cfg, key)) + 1 for key in self.length_keys}

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
        from modelpress.bundle import Bundle

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
    return cls.configure(options, model_dir)


def task_from_dict(d: Mapping[str, Any]) -> Task:
    """Rebuild a configured task from :meth:`Task.describe` (``bundle.json``)."""
    if not isinstance(d, Mapping) or "task" not in d:
        raise BadInputError("bundle metadata names no task")
    cls = get_task(str(d["task"]))
    return cls(**{k: v for k, v in d.items() if k != "task" and k in cls.options()})
