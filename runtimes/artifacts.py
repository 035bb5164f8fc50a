"""What each runtime ships in a bundle, and how it makes it from the one quantization plan.

A run calibrates once (``modelpress.quantize``): the plan's own output is ``model.int8.onnx``. Every
runtime the recipe asks for then writes its artifact from that plan and the fp32 export — the
OpenVINO IR of the same plan, TensorRT's Q/DQ twin and engines — and says which of its files
validation measures. The pipeline only iterates over :func:`wanted_artifacts`: it names no
runtime, so a runtime that ships in the bundle is its module (a :class:`RuntimeArtifact`
subclass) plus one :func:`register` line below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from modelpress.paths import MODEL_INT8_ONNX, OPENVINO_XML
from modelpress.registry import Registry


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

    def measured(self, paths: Any) -> list[tuple[str, Path]]:
        """Models beside the bundle's own that validation measures (report name, file); the bundle's
        model on this runtime is measured anyway when the runtime is in ``validate.runtimes``."""
        return []


ARTIFACTS: Registry[type[RuntimeArtifact]] = Registry("bundle runtime")
#: the runtimes ``load(dir, runtime=...)`` opens, and the file each one loads from a bundle
BUNDLE_RUNTIMES: dict[str, str] = {}


def register(name: str, entry: str, *, model_file: str | None = None) -> None:
    """One runtime's artifact class (``"module:Class"``, imported when a recipe wants it); with
    ``model_file`` it is a bundle runtime (``validate.runtimes``, ``load(dir, runtime=name)``)."""
    ARTIFACTS.register(name, entry)
    if model_file is not None:
        BUNDLE_RUNTIMES[name] = model_file


register("onnxruntime", "modelpress.runtimes.onnxruntime_runner:OnnxRuntimeArtifact", model_file=MODEL_INT8_ONNX)
register("openvino", "modelpress.runtimes.openvino_runner:OpenVINOArtifact", model_file=OPENVINO_XML)
register("tensorrt", "modelpress.runtimes.tensorrt.stage:TensorRTArtifact")


def wanted_artifacts(recipe: Any) -> list[RuntimeArtifact]:
    """The artifacts this recipe ships, in registry order, each runtime's availability checked."""
    wanted = [a for a in (ARTIFACTS.get(name)() for name in ARTIFACTS.names()) if a.wanted(recipe)]
    for artifact in wanted:
        artifact.require(recipe)
    return wanted
