"""``modelpress run``: chain the stages of a recipe into a staging folder and publish the bundle.

This module only orders the stages; each lives in its package: distill (modelpress.distill.stage),
export (modelpress.export.stage), quantize (modelpress.runtimes.quantize.stage), each runtime's
artifact from the plan (modelpress.runtimes.artifacts: the OpenVINO IR, TensorRT's twin and
engines), validation and the gate (modelpress.validate.stage). It names no runtime: the artifacts
the recipe wants come from their registry. Data is read before the teacher is loaded, so a bad file
fails in a second. The bundle is written into a
staging folder and renamed into place only when everything, the manifest included, is written:
to ``<out>/<name>`` when the gate passed, to ``<out>/<name>.rejected`` when it failed, so the last
passing bundle is never replaced by a failed one (``modelpress.paths`` describes the layout).
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelpress.calibration_data.feeds import ExampleFeed
from modelpress.errors import BadInputError
from modelpress.fileio import graph_input_shapes
from modelpress.lock import bundle_lock
from modelpress.modalities import get_modality
from modelpress.models import load_model, load_model_and_preprocessor, resolve_model_ref
from modelpress.paths import (RunPaths, publish, recover, refuse_inside_bundle, refuse_to_replace, rejected_dir,
                              staging_dir)
from modelpress.recipe import Recipe
from modelpress.runtimes.target import resolve_target
from modelpress.tasks import configure_task
from modelpress.validate.gate import GateResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    bundle: Path                # where the run was published: <out>/<name>, or <out>/<name>.rejected
    gate: GateResult | None

    @property
    def rejected(self) -> bool:
        return self.gate is not None and not self.gate.passed


def run_recipe(recipe: Recipe, out_dir: Path) -> RunOutcome:
    out_dir = Path(out_dir)
    refuse_inside_bundle(out_dir)  # a bundle nested in a bundle breaks the outer one's manifest
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"--out {out_dir}: cannot create the output folder ({exc.strerror})") from None
    with bundle_lock(out_dir, recipe.name):  # one run at a time per bundle; a second one exits 2
        for done in recover(out_dir, recipe.name):
            log.info("%s: %s (left by an interrupted run)", out_dir, done)
        for final in (out_dir / recipe.name, rejected_dir(out_dir, recipe.name)):
            refuse_to_replace(final)  # now, not after the run: what is there is not a bundle to replace
        staging = staging_dir(out_dir, recipe.name)
        try:
            staging.mkdir()
            return _run_stages(recipe, out_dir, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # nothing half-written stays behind
            raise


def _run_stages(recipe: Recipe, out_dir: Path, staging: Path) -> RunOutcome:
    with contextlib.ExitStack() as stack:
        return _chain(recipe, out_dir, staging, stack)


@dataclass
class _Run:
    """What the stages of one run share, read once."""
    recipe: Recipe                # as it runs: lengths fitted, the plan pinned to the target
    out_dir: Path
    paths: RunPaths               # the staging folder
    stack: contextlib.ExitStack
    task: Any
    modality: Any
    target: Any
    teacher_ref: str
    teacher_model: Any
    preprocessor: Any
    eval_set: Any
    cal_examples: Any
    fitted: Any                   # the lengths fitted to the model (modalities.Fitted)


@dataclass
class _Pressed:
    """What export and quantization left: the deployed model's graph and the bundle's artifacts."""
    deployed: Any
    exported: Any
    quant: Any
    encoder: Any                  # validation's encoder (validate.max_length)
    cal_encoder: Any
    teacher: Any                  # the teacher's opener
    extras: dict[str, Any]        # report sections the runtimes' artifacts added (engines)


def _chain(recipe: Recipe, out_dir: Path, staging: Path, stack: contextlib.ExitStack) -> RunOutcome:
    from modelpress.runtimes.artifacts import wanted_artifacts

    paths = RunPaths(staging)
    if recipe.source:
        shutil.copyfile(recipe.source, paths.recipe)
    artifacts = wanted_artifacts(recipe)  # a runtime this machine lacks fails now, before any work
    run = _prepare(recipe, out_dir, paths, stack)
    pressed = _press(run, _deployed_model(run), artifacts)
    report = _validate(run, pressed, artifacts)
    return _publish(run, report)


def _prepare(recipe: Recipe, out_dir: Path, paths: RunPaths, stack: contextlib.ExitStack) -> _Run:
    """The task, the target, the data (first: a bad file fails in a second, not after loading and
    exporting), the teacher, and every length fitted to what the model takes."""
    from modelpress.recipe import fit_lengths

    teacher_ref = resolve_model_ref(recipe.teacher)
    task = configure_task(recipe.task, recipe.task_options,
                          model_dir=teacher_ref if Path(teacher_ref).is_dir() else None)
    modality = get_modality(task.modality)
    # every CPU-dependent choice of the plan follows the target, not this machine (7-bit weights)
    target = resolve_target(recipe.target)
    recipe = recipe.with_(quantize=recipe.quantize.for_target(target))
    log.info("target %s (%s)", target.name, "this machine" if target.detected else "declared")
    cal_examples = modality.read_calibration(recipe.calibration)
    log.info("loading teacher %s", teacher_ref)
    teacher_model, preprocessor = load_model_and_preprocessor(
        teacher_ref, task, trust_remote_code=recipe.trust_remote_code, allow_new_heads=recipe.allow_new_heads,
        seed=recipe.seed)
    # a length the user wrote that the model cannot take is refused; a default is clipped to fit
    sections, fitted = fit_lengths({"calibration": recipe.calibration, "validate": recipe.validate}, task=task,
                                   modality=modality, model_config=teacher_model.config, preprocessor=preprocessor,
                                   written=recipe.written)
    recipe = recipe.with_(**sections)  # what ran, in the manifest too
    v, cal = recipe.validate, recipe.calibration
    es = task.read_eval(v.eval_data, v, model_config=teacher_model.config, preprocessor=preprocessor)
    cal_examples = modality.calibration_set(cal, preprocessor, examples=cal_examples)
    return _Run(recipe, out_dir, paths, stack, task, modality, target, teacher_ref, teacher_model, preprocessor,
                es, cal_examples, fitted)


def _deployed_model(run: _Run) -> Any:
    """What the bundle deploys: the student distilled now, a given student, or the teacher."""
    from modelpress.distill.stage import distill_stage

    recipe = run.recipe
    if recipe.distill_enabled:
        return distill_stage(recipe, run.teacher_ref, run.task, run.out_dir, run.paths)
    if recipe.student is not None:
        log.info("deploying the student %s", recipe.student)
        return load_model(resolve_model_ref(recipe.student), run.task, trust_remote_code=recipe.trust_remote_code)
    return run.teacher_model


def _press(run: _Run, deployed: Any, artifacts: list) -> _Pressed:
    """Export, one calibration plan, ``bundle.json``, and each runtime's artifact from the plan."""
    from modelpress.bundle import write_bundle_meta
    from modelpress.export.stage import export_stage
    from modelpress.runtimes.quantize.stage import quantize_stage
    from modelpress.validate.stage import candidate_evaluator, teacher_opener

    recipe, paths, task, v, cal = run.recipe, run.paths, run.task, run.recipe.validate, run.recipe.calibration
    exported = export_stage(deployed, run.preprocessor, task=task, cfg=recipe.export, paths=paths)
    names, shapes = exported.result.input_names, graph_input_shapes(paths.model_onnx)
    encoder = run.modality.encoder(run.preprocessor, input_names=names, max_length=v.max_length, input_shapes=shapes)
    cal_encoder = run.modality.encoder(run.preprocessor, input_names=names, max_length=cal.max_length,
                                       input_shapes=shapes)
    teacher = teacher_opener(run.teacher_model, task=task, encoder=encoder, threads=v.threads)
    evaluate = None
    if recipe.quantize.mode == "auto":
        evaluate = candidate_evaluator(task=task, teacher=teacher, encoder=encoder, eval_set=run.eval_set, cfg=v,
                                       gate_cfg=recipe.gate)
    quant = quantize_stage(paths, ExampleFeed(run.cal_examples, cal_encoder, batch_size=cal.batch_size),
                           recipe.quantize, evaluate=evaluate)
    write_bundle_meta(paths.root, task=task, input_names=names, max_length=v.max_length,
                      max_positions=run.fitted.limit,
                      label_names=_label_names(deployed.config) if task.needs_labels else [],
                      runtimes=v.runtimes, input_shapes=shapes, target=run.target.describe())
    extras: dict[str, Any] = {}
    for artifact in artifacts:
        extras.update(artifact.write(quant, paths, recipe=recipe, task=task))
    return _Pressed(deployed, exported, quant, encoder, cal_encoder, teacher, extras)


def _seed_variants(run: _Run, pressed: _Pressed) -> tuple[list, list]:
    """The shipped plan calibrated again on other samples (``quantize.calibration_seeds``): their
    openers, and (seed, path, seconds) of each."""
    from modelpress.runtimes.quantize.stage import seed_variants
    from modelpress.validate.stage import file_opener

    recipe, cal = run.recipe, run.recipe.calibration
    if recipe.quantize.calibration_seeds <= 1:
        return [], []
    log.info("calibrating %d more times on other samples (quantize.calibration_seeds)",
             recipe.quantize.calibration_seeds - 1)
    work = run.stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{recipe.name}.seeds-", dir=run.out_dir))
    feeds = [(cal.seed + k, ExampleFeed(run.modality.calibration_set(cal, run.preprocessor, seed=cal.seed + k),
                                        pressed.cal_encoder, batch_size=cal.batch_size))
             for k in range(1, recipe.quantize.calibration_seeds)]
    seeds = seed_variants(run.paths.model_onnx, feeds, pressed.quant, recipe.quantize, Path(work))
    return [file_opener(path, task=run.task, encoder=pressed.encoder, threads=recipe.validate.threads,
                        name=f"int8-seed{seed}") for seed, path, _ in seeds], seeds


def _validate(run: _Run, pressed: _Pressed, artifacts: list) -> dict[str, Any]:
    """Every model beside the fp32 teacher; the gated one is the bundle itself (its manifest comes
    after validation) on each of its runtimes, and its calibration-seed twins."""
    from modelpress.bundle import load as load_bundle
    from modelpress.distill.stage import untrained_subset
    from modelpress.validate.stage import file_opener, teacher_opener, validate_stage

    recipe, task, v, paths = run.recipe, run.task, run.recipe.validate, run.paths
    variants, seeds = _seed_variants(run, pressed)
    log.info("validating against the fp32 teacher")
    candidates = []
    subset = untrained_subset(paths.student, run.teacher_model) if recipe.distill_enabled else None
    if subset is not None:  # what distillation started from, to show what it bought
        candidates.append(teacher_opener(subset, task=task, encoder=pressed.encoder, threads=v.threads,
                                         name="untrained-subset-fp32"))
    students = recipe.distill_enabled or recipe.student is not None
    candidates.append(file_opener(paths.model_onnx, task=task, encoder=pressed.encoder, threads=v.threads,
                                  name="student-onnx-fp32" if students else "onnx-fp32"))
    candidates += [file_opener(path, task=task, encoder=pressed.encoder, threads=v.threads, name=name,
                               runtime=artifact.runtime)
                   for artifact in artifacts for name, path in artifact.measured(paths)]

    def bundle_on(runtime: str):
        return lambda: load_bundle(paths.root, runtime=runtime, threads=v.threads, verify=False,
                                   **v.runner_options(runtime))

    candidates.append(bundle_on(v.runtimes[0]))
    report = validate_stage(task=task, cfg=v, gate_cfg=recipe.gate, teacher=pressed.teacher, candidates=candidates,
                            eval_set=run.eval_set, name=recipe.name, variants=variants,
                            other_runtimes=[bundle_on(r) for r in v.runtimes[1:]])
    quant = pressed.quant
    report.update(defaults_clipped=dict(run.fitted.clipped), target=run.target.describe(),
                  export=pressed.exported.report_section(), quantization=quant.report_section(recipe.quantize.mode))
    if seeds:
        report["quantization"]["calibration_seeds"] = [
            {"seed": recipe.calibration.seed, "name": "int8", "calibration_seconds": quant.summary.calibration_seconds},
            *({"seed": s, "name": f"int8-seed{s}", "calibration_seconds": t} for s, _, t in seeds)]
    report["analysis"] = quant.analysis_section
    report.update(pressed.extras)
    return report


def _publish(run: _Run, report: dict[str, Any]) -> RunOutcome:
    """The reports and the manifest, then the staging folder into place: ``<out>/<name>``, or
    ``<out>/<name>.rejected`` when the gate failed (never over the last passing bundle)."""
    from modelpress.manifest import write_manifest
    from modelpress.validate.report import write_reports

    recipe, staging = run.recipe, run.paths.root
    write_reports(report, staging)
    write_manifest(staging, recipe=recipe.to_dict(), task=run.task.describe(),
                   metrics={k: m["metrics"] for k, m in report["models"].items()}, gate=report["gate"],
                   input_names=list(report["export"]["input_names"]))
    gate = GateResult.from_dict(report["gate"]) if report.get("gate") else None
    failed = gate is not None and not gate.passed
    final = rejected_dir(run.out_dir, recipe.name) if failed else run.out_dir / recipe.name
    publish(staging, final)
    return RunOutcome(final, gate)


def _label_names(config) -> list[str]:
    """Class / tag names by id, when the model has a label space."""
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label, key=int)] if id2label else []
