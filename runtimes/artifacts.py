"""What each runtime ships in a bundle, and how it makes it from the one quantization plan.

A run calibrates once (``modelpress.quantize``): the plan's own output is ``model.int8.onnx`` (static
W8A8; weight-only writes ``model.int4.onnx`` / ``model.w8.onnx``: ``paths.PRESSED_FILES``). Every
runtime the recipe asks for then writes its artifact from that plan and the fp32 export — the
OpenVINO IR of the same plan, TensorRT's Q/DQ twin and engines — and says which of its files
validation measures. The pipeline only iterates over :func:`wanted_artifacts`: it names no
runtime, so a runtime that ships in the bundle is its module (a :class:`RuntimeArtifact`
subclass) plus one :func:`register` line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from modelpress.paths import (
    MODEL_INT8_ONNX,
    OPENVINO_GENAI_XML,
    OPENVINO_XML,
    PRESSED_FILES,
    precision_of_file,
    pressed_precision,
)
from modelpress.registry import Registry


@dataclass(frozen=True)
class Offer:
    """A candidate for the bundle's default before validation (``validate.select``): what it is and
    where the bundle keeps it."""

    name: str
    runtime: str
    precision: str
    file: str
    options: Mapping[str, Any] | None = None


class RuntimeArtifact:
    """One runtime's part of a bundle. Subclasses live in the runtime's own module."""

    #: the runner's name in ``runtimes.registry.RUNTIMES``
    runtime: ClassVar[str]

    def wanted(self, recipe: Any) -> bool:
        """Whether this recipe ships the artifact (default: the runtime is in ``validate.runtimes``)."""
        return self.runtime in recipe.validate.runtimes

    def require(self, recipe: Any) -> None:
        """Fail now, before any work, when this machine cannot make or run the artifact."""

    def write(self, quant: Any, paths: Any, *, recipe: Any, task: Any) -> dict[str, Any]:
        """Write the artifact into the run folder from the quantize stage's outcome; returns what
        the report adds (a key per section). Called after ``bundle.json`` is written."""
        return {}

    def offers(self, *, recipe: Any, target: Any) -> tuple[list[Any], list[str]]:
        """The candidates for the bundle's default this runtime offers (``validate.select.Offer``,
        files relative to the bundle) for the precisions ``select.candidates`` names, and notes on
        what it does not offer. Default: the int8 plan's artifact, which validation gates anyway."""
        if "int8" not in recipe.select.candidates or self.runtime not in BUNDLE_RUNTIMES:
            return [], []
        file = runtime_file(self.runtime, pressed_precision(recipe.quantize.mode, recipe.quantize.weight_bits))
        options = recipe.validate.runner_options(self.runtime)
        return [Offer(bundle_model_name(self.runtime, file), self.runtime, "int8", file, options)], []

    def measured(self, paths: Any) -> list[tuple[str, Path]]:
        """Models beside the bundle's own that validation measures (report name, file); the bundle's
        model on this runtime is measured anyway when the runtime is in ``validate.runtimes``."""
        return []


ARTIFACTS: Registry[type[RuntimeArtifact]] = Registry("bundle runtime")
#: the runtimes ``load(dir, runtime=...)`` opens, and the file each one loads from a bundle
BUNDLE_RUNTIMES: dict[str, str] = {}
#: the bundle method (``Task.api``) a runtime needs of the task, where it runs only some tasks
TASK_API: dict[str, str] = {}


#: the fp32 export every bundle keeps, and the reference every candidate is timed against
FP32_MODEL = "model.onnx"
REFERENCE_RUNTIME = "onnxruntime"


def reference_offer(name: str) -> Any:
    """ONNX Runtime on the fp32 export: the floor of selection (nothing slower is ever the default)."""
    return Offer(name, REFERENCE_RUNTIME, "fp32", FP32_MODEL)


def runtime_file(runtime: str, precision: str = "int8") -> str:
    """The file ``runtime`` loads from a bundle whose pressed model holds ``precision``: the runtime
    that ships the plan's own output loads it under its precision's name (``model.int4.onnx``)."""
    file = BUNDLE_RUNTIMES[runtime]
    return PRESSED_FILES[precision] if file == MODEL_INT8_ONNX else file


def bundle_model_name(runtime: str, file: str) -> str:
    """The report's name of a bundle's model (``load()`` names it so too): the plan's own output by
    its precision ("int8", "int4", "w8"), another runtime's artifact of the plan "int8-<runtime>"."""
    precision = precision_of_file(file)
    if runtime == REFERENCE_RUNTIME and precision is not None:
        return str(precision)
    if precision is not None and BUNDLE_RUNTIMES.get(runtime) == MODEL_INT8_ONNX:  # the pressed file elsewhere
        return f"{precision}-{runtime}"  # (onnxruntime-genai)
    return f"int8-{runtime}" if file == BUNDLE_RUNTIMES.get(runtime) else file


def register(name: str, entry: str, *, model_file: str | None = None, task_api: str | None = None) -> None:
    """One runtime's artifact class (``"module:Class"``, imported when a recipe wants it); with
    ``model_file`` it is a bundle runtime (``validate.runtimes``, ``load(dir, runtime=name)``); with
    ``task_api`` it runs only the tasks whose bundle has that method (the recipe checks it)."""
    ARTIFACTS.register(name, entry)
    if model_file is not None:
        BUNDLE_RUNTIMES[name] = model_file
    if task_api is not None:
        TASK_API[name] = task_api


register("onnxruntime", "modelpress.runtimes.onnxruntime_runner:OnnxRuntimeArtifact", model_file=MODEL_INT8_ONNX)
register("openvino", "modelpress.runtimes.openvino_runner:OpenVINOArtifact", model_file=OPENVINO_XML)
register(
    "openvino-genai",
    "modelpress.runtimes.openvino_genai_folder:OpenVINOGenAIArtifact",
    model_file=OPENVINO_GENAI_XML,
    task_api="generate",
)
register("tensorrt", "modelpress.runtimes.tensorrt.stage:TensorRTArtifact")
register("onnxruntime-genai", "modelpress.runtimes.genai_runner:GenAIArtifact", model_file=MODEL_INT8_ONNX)


def wanted_artifacts(recipe: Any) -> list[RuntimeArtifact]:
    """The artifacts this recipe ships, in registry order, each runtime's availability checked."""
    wanted = [a for a in (ARTIFACTS.get(name)() for name in ARTIFACTS.names()) if a.wanted(recipe)]
    for artifact in wanted:
        artifact.require(recipe)
    return wanted
