"""The single-stage commands of a recipe: ``modelpress export | quantize | validate --recipe R``
(what ``make export quantize validate`` run) chain the pipeline's own stage functions
(``modelpress.pipeline``) on a **stage folder**, so every recipe key means what it means in
``modelpress run``: the same ``model.int8.onnx`` bytes and the same verdict.

The stage folder is the folder of the command's output (``make``: ``artifacts/<name>.stages/``). Its
files have the run folder's names (``modelpress.paths.RunPaths``: ``tokenizer/``, ``config.json``,
``analysis.json``, each runtime's artifact such as ``openvino/model.xml``), except the models the
command names: export's ``--out``, quantize's input and ``--out`` (its record beside it,
``<out>.quantization.json``), validate's ``--candidate`` (the int8 model; the other runtimes'
artifacts and, for ``quantize.calibration_seeds > 1``, ``model.onnx`` beside it). No
``bundle.json`` and no bundle manifest are written there: a stage folder is not a bundle.

Each stage does what ``run`` does before it (the recipe's task, target, data and teacher, loaded
with ``trust_remote_code`` / ``allow_new_heads`` / ``seed``; every length fitted to the model), then
its own part: export the deployed model (distilling first when ``[distill]`` is enabled, into
``<out>/<name>.distill/`` as ``run`` does); quantize by ``quantize.mode`` (auto judged against the
teacher on the eval set) and write each runtime's artifact from the plan; validate the candidate on
every ``validate.runtimes`` entry and its calibration-seed twins (re-calibrated from ``model.onnx``
with the method and fp32 nodes the quantize stage recorded), gated by ``[gate]``.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelpress import pipeline
from modelpress.errors import BadInputError
from modelpress.paths import RunPaths, pressed_precision
from modelpress.pipeline import deployed_model, encoders, export_model, judge, prepare, seed_variants, write_artifacts
from modelpress.recipe import Recipe
from modelpress.runtimes.artifacts import BUNDLE_RUNTIMES, wanted_artifacts
from modelpress.quantize.stage import recorded_outcome
from modelpress.validate.stage import file_opener


@dataclass(frozen=True)
class StagePaths(RunPaths):
    """A stage folder: the run folder's layout, with the models where the command names them."""

    fp32: Path | None = None  # the fp32 ONNX model (default: <root>/model.onnx)
    int8: Path | None = None  # the pressed ONNX model (default: <root>/model.<precision>.onnx)
    student_dir: Path | None = None  # where distillation's student is copied (default: <root>/student)

    @property
    def model_onnx(self) -> Path:
        return self.fp32 or super().model_onnx

    @property
    def pressed_onnx(self) -> Path:
        return self.int8 or super().pressed_onnx

    @property
    def quantization_json(self) -> Path:
        """The quantize command's record, beside its model (``model.int8.quantization.json``)."""
        return self.int8.with_suffix(".quantization.json") if self.int8 else super().quantization_json

    @property
    def student(self) -> Path:
        return self.student_dir or super().student


def _out_dir(stage: Path, recipe: Recipe) -> Path:
    """The ``--out`` of ``run`` a stage folder stands for: ``artifacts`` for ``artifacts/<name>.stages``
    (so ``make export`` and ``make run`` share ``<out>/<name>.distill/``), else the folder itself."""
    return stage.parent if stage.name == f"{recipe.name}.stages" else stage


def _precision(recipe: Recipe) -> str:
    """What the recipe's quantize stage writes (``paths.PRESSED_FILES``)."""
    return pressed_precision(recipe.quantize.mode, recipe.quantize.weight_bits)


def export(recipe: Recipe, out: Path) -> Any:
    """The deployed model (distilled now, the recipe's student, or the teacher) → ``out``."""
    stage = out.parent
    stage.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        student = None
        if recipe.distill_enabled:  # the student is exported from a copy that goes with the command
            student = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".student-", dir=stage)))
        paths = StagePaths(stage, _precision(recipe), fp32=out, student_dir=student / "student" if student else None)
        run = prepare(recipe, _out_dir(stage, recipe), paths, stack)
        return export_model(run, deployed_model(run))


@dataclass(frozen=True)
class Quantized:
    outcome: Any  # quantize.stage.QuantizeOutcome
    record: Path  # its quantization.json
    artifacts: dict[str, Path]  # each other runtime's model written from the plan


def quantize(recipe: Recipe, onnx: Path, out: Path) -> Quantized:
    """``onnx`` → ``out`` by ``quantize.mode``, its analysis and record, and each runtime's artifact
    the recipe wants (``validate.runtimes``, ``[engine]``) beside it, from the same plan."""
    stage = out.parent
    artifacts = wanted_artifacts(recipe)  # a runtime this machine lacks fails now, before any work
    stage.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        paths = StagePaths(stage, _precision(recipe), fp32=onnx, int8=out)
        run = prepare(recipe, stage, paths, stack)
        outcome = pipeline.quantize(run, encoders(run, onnx))
        write_artifacts(run, outcome, artifacts)
    files = runtime_files(paths, recipe.validate.runtimes)
    return Quantized(outcome, paths.quantization_json, {r: f for r, f in files.items() if f != out})


def runtime_files(paths: RunPaths, runtimes: tuple[str, ...]) -> dict[str, Path]:
    """The model each runtime runs in a stage folder: the int8 model for the runtime that ships the
    plan's own output, the bundle's file of the others (``openvino/model.xml``) in its folder."""
    own = RunPaths(paths.root).pressed_onnx
    return {
        r: paths.pressed_onnx if paths.root / BUNDLE_RUNTIMES[r] == own else paths.root / BUNDLE_RUNTIMES[r]
        for r in runtimes
    }


def validate(recipe: Recipe, candidate: Path, out: Path) -> dict[str, Any]:
    """The candidate on each of ``validate.runtimes`` (and its calibration-seed twins) against the
    teacher, gated by ``[gate]``: the report ``run`` would write, less the rows of the models ``run``
    measures only for the record (the fp32 export, the untrained subset)."""
    if not candidate.is_file():
        raise BadInputError(f"--candidate {candidate}: not found")
    paths = StagePaths(candidate.parent, _precision(recipe), int8=candidate)
    wanted_artifacts(recipe)  # each runtime available here
    files = runtime_files(paths, recipe.validate.runtimes)
    for runtime, file in files.items():
        if not file.is_file():
            raise BadInputError(
                f"{file}: not found; validate.runtimes names {runtime}, whose model "
                "`modelpress quantize --recipe` writes beside the int8 model"
            )
    recorded = _recorded(paths) if recipe.quantize.calibration_seeds > 1 else None
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        run = prepare(recipe, out, paths, stack)
        enc = encoders(run, candidate)
        v = run.recipe.validate
        first = next((r for r, f in files.items() if f == candidate), None)  # onnxruntime-genai: the same file
        gated = [
            file_opener(
                file,
                task=run.task,
                encoder=enc.encoder,
                threads=v.threads,
                runtime=runtime,
                name=paths.precision
                if runtime == first
                else f"{paths.precision}-{runtime}"
                if file == candidate
                else f"int8-{runtime}",
                **v.runner_options(runtime),
            )
            for runtime, file in files.items()
        ]
        variants, _ = seed_variants(run, enc, recorded) if recorded is not None else ([], [])
        report = judge(run, enc, measured=[], gated=gated, variants=variants)
    # the lengths this stage used: calibration's only when it calibrated (the seed twins)
    report["defaults_clipped"] = {
        k: c for k, c in report["defaults_clipped"].items() if recorded is not None or not k.startswith("calibration.")
    }
    return report


def _recorded(paths: StagePaths) -> Any:
    """What the quantize stage chose for the candidate (its record beside it, or a run folder's
    ``quantization.json``), and the fp32 model it re-calibrates: ``calibration_seeds > 1``."""
    needs = "quantize.calibration_seeds > 1 re-calibrates the candidate's plan on other samples"
    if not paths.model_onnx.is_file():
        raise BadInputError(
            f"{paths.model_onnx}: not found; {needs} from the fp32 model.onnx beside it "
            "(`modelpress export --recipe` into the same folder)"
        )
    for record in (paths.quantization_json, RunPaths(paths.root).quantization_json):
        if record.is_file():
            return recorded_outcome(record)
    raise BadInputError(
        f"{paths.quantization_json}: not found; {needs} with the method and fp32 nodes "
        "`modelpress quantize --recipe` recorded there"
    )
