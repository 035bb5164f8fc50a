"""``modelpress run``: chain the stages of a recipe into a staging folder and publish the bundle.

This module only orders the stages; each lives in its package: distill (modelpress.distill.stage),
export (modelpress.export.stage), quantize (modelpress.quantize.stage), each runtime's
artifact from the plan (modelpress.runtimes.artifacts: the OpenVINO IR, TensorRT's twin and
engines), validation and the gate (modelpress.validate.stage). It names no runtime: the artifacts
the recipe wants come from their registry. Data is read before the teacher is loaded, so a bad file
fails in a second. The bundle is written into a
staging folder and renamed into place only when everything, the manifest included, is written:
to ``<out>/<name>`` when the gate passed, to ``<out>/<name>.rejected`` when it failed, so the last
passing bundle is never replaced by a failed one (``modelpress.paths`` describes the layout).

The stage functions (:func:`prepare`, :func:`deployed_model`, :func:`export_model`, :func:`encoders`,
:func:`quantize`, :func:`write_artifacts`, :func:`seed_variants`, :func:`judge`) are public: the
single-stage commands (``modelpress export|quantize|validate --recipe``, ``modelpress.stage_commands``)
run them on a stage folder, so every recipe key means the same there as in ``run``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpress.calibration_data.feeds import ExampleFeed
from modelpress.errors import BadInputError
from modelpress.fileio import graph_input_shapes
from modelpress.lock import bundle_lock
from modelpress.memory import StageMeter, release_weight_pages
from modelpress.modalities import get_modality
from modelpress.models import load_model, load_model_and_preprocessor, resolve_model_ref
from modelpress.paths import (
    RunPaths,
    pressed_precision,
    publish,
    recover,
    refuse_inside_bundle,
    refuse_to_replace,
    rejected_dir,
    staging_dir,
)
from modelpress.recipe import Recipe
from modelpress.runtimes.registry import RUNTIMES
from modelpress.runtimes.target import resolve_target
from modelpress.tasks import configure_task
from modelpress.validate.gate import GateResult
from modelpress.bundle import load as load_bundle, record_default, write_bundle_meta
from modelpress.distill.stage import distill_stage, untrained_subset
from modelpress.export.stage import export_stage
from modelpress.manifest import write_manifest
from modelpress.provenance import model_source
from modelpress.quantize.int8_classes import keep_paying_classes
from modelpress.quantize.stage import quantize_stage, seed_variants as calibrate_again
from modelpress.recipe import fit_lengths, require_data
from modelpress.runtimes.artifacts import reference_offer, wanted_artifacts
from modelpress.validate.report import write_reports
from modelpress.validate.select import Setup
from modelpress.validate.stage import candidate_evaluator, file_opener, teacher_opener, validate_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    bundle: Path  # where the run was published: <out>/<name>, or <out>/<name>.rejected
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
class Run:
    """What the stages of one run share, read once (``run`` and the single-stage commands alike)."""

    recipe: Recipe  # as it runs: lengths fitted, the plan pinned to the target
    out_dir: Path
    paths: RunPaths  # the staging folder (a stage command's folder)
    stack: contextlib.ExitStack
    task: Any
    modality: Any
    target: Any
    teacher_ref: str
    teacher_model: Any
    preprocessor: Any
    eval_set: Any
    cal_examples: Any
    fitted: Any  # the lengths fitted to the model (modalities.Fitted)
    meter: StageMeter = field(default_factory=StageMeter)  # each stage's time and peak RSS (report)


@dataclass(frozen=True)
class Encoders:
    """How one graph is fed: validation's encoder (validate.max_length), calibration's, and the
    teacher's opener on validation's encoder."""

    input_names: tuple[str, ...]
    shapes: Any
    encoder: Any
    cal_encoder: Any
    teacher: Any


@dataclass
class _Pressed:
    """What export and quantization left: the deployed model's graph and the bundle's artifacts."""

    deployed: Any
    exported: Any
    quant: Any
    enc: Encoders
    extras: dict[str, Any]  # report sections the runtimes' artifacts added (engines)


def _chain(recipe: Recipe, out_dir: Path, staging: Path, stack: contextlib.ExitStack) -> RunOutcome:
    paths = RunPaths(staging, precision=pressed_precision(recipe.quantize.mode, recipe.quantize.weight_bits))
    if recipe.source:
        shutil.copyfile(recipe.source, paths.recipe)
    artifacts = wanted_artifacts(recipe)  # a runtime this machine lacks fails now, before any work
    meter = StageMeter()
    with meter.stage("prepare"):
        run = prepare(recipe, out_dir, paths, stack)
    run.meter = meter
    with meter.stage("distill" if recipe.distill_enabled else "load"):
        deployed = deployed_model(run)
    pressed = _press(run, deployed, artifacts)
    with meter.stage("validate"):
        report = _validate(run, pressed, artifacts)
    report["stages"] = meter.stages
    return _publish(run, report)


def prepare(recipe: Recipe, out_dir: Path, paths: RunPaths, stack: contextlib.ExitStack) -> Run:
    """The task, the target, the data (first: a bad file fails in a second, not after loading and
    exporting), the teacher, and every length fitted to what the model takes."""
    require_data(recipe)
    teacher_ref = resolve_model_ref(recipe.teacher, revision=recipe.revision)
    task = configure_task(
        recipe.task, recipe.task_options, model_dir=teacher_ref if Path(teacher_ref).is_dir() else None
    )
    modality = get_modality(task.modality)
    # every CPU-dependent choice of the plan follows the target, not this machine (7-bit weights)
    target = resolve_target(recipe.target)
    recipe = recipe.with_(quantize=recipe.quantize.for_target(target))
    log.info("target %s (%s)", target.name, "this machine" if target.detected else "declared")
    read = modality.read_calibration(recipe.calibration)
    log.info("loading teacher %s", teacher_ref)
    teacher_model, preprocessor = load_model_and_preprocessor(
        teacher_ref,
        task,
        trust_remote_code=recipe.trust_remote_code,
        allow_new_heads=recipe.allow_new_heads,
        seed=recipe.seed,
    )
    # a length the user wrote that the model cannot take is refused; a default is clipped to fit
    sections, fitted = fit_lengths(
        {"calibration": recipe.calibration, "validate": recipe.validate},
        task=task,
        modality=modality,
        model_config=teacher_model.config,
        preprocessor=preprocessor,
        written=recipe.written,
    )
    recipe = recipe.with_(**sections)  # what ran, in the manifest too
    task = task.with_lengths(fitted)
    # what the task leaves to the model and the runtimes ("auto") is decided once, here, and reported
    task = task.for_model(teacher_model.config, {r: RUNTIMES.get(r) for r in recipe.validate.runtimes})
    v, cal = recipe.validate, recipe.calibration
    es = task.read_eval(v.eval_data, v, model_config=teacher_model.config, preprocessor=preprocessor)
    cal_examples = modality.calibration_set(cal, preprocessor, examples=read)
    return Run(
        recipe,
        out_dir,
        paths,
        stack,
        task,
        modality,
        target,
        teacher_ref,
        teacher_model,
        preprocessor,
        es,
        cal_examples,
        fitted,
    )


def deployed_model(run: Run) -> Any:
    """What the bundle deploys: the student distilled now, a given student, or the teacher."""
    recipe = run.recipe
    if recipe.distill_enabled:
        return distill_stage(recipe, run.teacher_ref, run.task, run.out_dir, run.paths)
    if recipe.student is not None:
        log.info("deploying the student %s", recipe.student)
        return load_model(resolve_model_ref(recipe.student), run.task, trust_remote_code=recipe.trust_remote_code)
    return run.teacher_model


def export_model(run: Run, deployed: Any) -> Any:
    """The deployed model → ``paths.model_onnx`` (parity-checked), its preprocessor and config beside it."""
    return export_stage(deployed, run.preprocessor, task=run.task, cfg=run.recipe.export, paths=run.paths)


def encoders(run: Run, graph: Path, input_names: tuple[str, ...] | None = None) -> Encoders:
    """How ``graph`` is fed (its inputs, as the export named them or as the graph lists them)."""
    v, cal = run.recipe.validate, run.recipe.calibration
    shapes = graph_input_shapes(graph)
    names = tuple(input_names or run.modality.check_graph_inputs(tuple(shapes), source=graph))
    encoder = run.modality.encoder(run.preprocessor, input_names=names, max_length=v.max_length, input_shapes=shapes)
    cal_encoder = run.modality.encoder(
        run.preprocessor, input_names=names, max_length=cal.max_length, input_shapes=shapes
    )
    teacher = teacher_opener(run.teacher_model, task=run.task, encoder=encoder, threads=v.threads)
    return Encoders(names, shapes, encoder, cal_encoder, teacher)


def quantize(run: Run, enc: Encoders) -> Any:
    """``paths.model_onnx`` → ``paths.pressed_onnx`` by the recipe's mode (auto: judged against
    the teacher on the eval set), its analysis and quantization record."""
    recipe, v, cal = run.recipe, run.recipe.validate, run.recipe.calibration
    evaluate = None
    if recipe.quantize.mode == "auto":
        evaluate = candidate_evaluator(
            task=run.task, teacher=enc.teacher, encoder=enc.encoder, eval_set=run.eval_set, cfg=v, gate_cfg=recipe.gate
        )
    quant = quantize_stage(
        run.paths,
        ExampleFeed(run.cal_examples, enc.cal_encoder, batch_size=cal.batch_size),
        recipe.quantize,
        evaluate=evaluate,
    )
    if recipe.select.int8_classes == "auto":
        quant.int8_classes = int8_where_it_pays(run, enc, quant)
    return quant


def int8_where_it_pays(run: Run, enc: Encoders, quant: Any) -> list:
    """Each op class of the plan int8 only where it pays (``quantize.int8_classes``), timed at the
    largest validation shape on the eval set's examples."""
    v, examples = run.recipe.validate, list(run.eval_set.examples)
    size, length = max(v.batch_sizes), max(enc.encoder.timing_lengths(v.seq_lengths), key=lambda s: s or 0)
    batch = enc.encoder.encode([examples[i % len(examples)] for i in range(size)], pad_to=length)
    return keep_paying_classes(quant, run.paths.pressed_onnx, target=run.target, batch=batch, threads=v.threads)


def write_artifacts(run: Run, quant: Any, artifacts: list) -> dict[str, Any]:
    """Each runtime's artifact from the plan; returns the report sections they add."""
    extras: dict[str, Any] = {}
    for artifact in artifacts:
        extras.update(artifact.write(quant, run.paths, recipe=run.recipe, task=run.task))
    return extras


def _press(run: Run, deployed: Any, artifacts: list) -> _Pressed:
    """Export, one calibration plan, ``bundle.json``, and each runtime's artifact from the plan."""
    task, v = run.task, run.recipe.validate
    with run.meter.stage("export"):
        exported = export_model(run, deployed)
    # the PyTorch weights the export read stay resident (mapped from safetensors) until validation
    # reads them again: handed back, quantization has the memory to itself (issue #24: ≤ 2.5× the weights)
    release_weight_pages()
    enc = encoders(run, run.paths.model_onnx, tuple(exported.result.input_names))
    with run.meter.stage("quantize"):
        quant = quantize(run, enc)
    release_weight_pages()  # the accuracy-aware search runs the teacher
    write_bundle_meta(
        run.paths.root,
        task=task,
        input_names=enc.input_names,
        max_length=v.max_length,
        max_positions=run.fitted.limit,
        label_names=_label_names(deployed.config) if task.needs_labels else [],
        runtimes=v.runtimes,
        input_shapes=enc.shapes,
        target=run.target.describe(),
        precision=run.paths.precision,
    )
    with run.meter.stage("artifacts"):
        extras = write_artifacts(run, quant, artifacts)
    quant.close()  # the plan's fp32 weights' work folder is in the staging folder: gone before publishing
    return _Pressed(deployed, exported, quant, enc, extras)


def seed_variants(run: Run, enc: Encoders, quant: Any) -> tuple[list, list]:
    """The shipped plan calibrated again on other samples (``quantize.calibration_seeds``) from
    ``paths.model_onnx``, with the method and fp32 nodes ``quant`` chose: their openers, and
    (seed, path, seconds) of each."""
    recipe, cal = run.recipe, run.recipe.calibration
    if recipe.quantize.calibration_seeds <= 1:
        return [], []
    log.info(
        "calibrating %d more times on other samples (quantize.calibration_seeds)", recipe.quantize.calibration_seeds - 1
    )
    work = run.stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{recipe.name}.seeds-", dir=run.out_dir))
    feeds = [
        (
            cal.seed + k,
            ExampleFeed(
                run.modality.calibration_set(cal, run.preprocessor, seed=cal.seed + k),
                enc.cal_encoder,
                batch_size=cal.batch_size,
            ),
        )
        for k in range(1, recipe.quantize.calibration_seeds)
    ]
    seeds = calibrate_again(run.paths.model_onnx, feeds, quant, recipe.quantize, Path(work))
    return [
        file_opener(path, task=run.task, encoder=enc.encoder, threads=recipe.validate.threads, name=f"int8-seed{seed}")
        for seed, path, _ in seeds
    ], seeds


def judge(
    run: Run,
    enc: Encoders,
    *,
    measured: list,
    gated: list,
    variants: Sequence = (),
    extra: Sequence = (),
    setup: Any = None,
) -> dict[str, Any]:
    """Validation against the fp32 teacher: ``measured`` models for the record, ``gated`` (the
    shipped model on each of its runtimes) and its calibration-seed ``variants``, the gate judging
    the worst of them; ``extra`` candidates for the default and the selection's ``setup``."""
    recipe = run.recipe
    log.info("validating against the fp32 teacher")
    report = validate_stage(
        task=run.task,
        cfg=recipe.validate,
        gate_cfg=recipe.gate,
        teacher=enc.teacher,
        candidates=[*measured, gated[0]],
        eval_set=run.eval_set,
        name=recipe.name,
        variants=variants,
        other_runtimes=gated[1:],
        extra=extra,
        setup=setup,
    )
    report.update(defaults_clipped=dict(run.fitted.clipped), target=run.target.describe(), data=data_section(recipe))
    return report


def _validate(run: Run, pressed: _Pressed, artifacts: list) -> dict[str, Any]:
    """Every model beside the fp32 teacher; the gated one is the bundle itself (its manifest comes
    after validation) on each of its runtimes, and its calibration-seed twins."""
    recipe, task, v, paths, enc = run.recipe, run.task, run.recipe.validate, run.paths, pressed.enc
    variants, seeds = seed_variants(run, enc, pressed.quant)
    measured = []
    subset = untrained_subset(paths.student, run.teacher_model) if recipe.distill_enabled else None
    if subset is not None:  # what distillation started from, to show what it bought
        measured.append(
            teacher_opener(subset, task=task, encoder=enc.encoder, threads=v.threads, name="untrained-subset-fp32")
        )
    students = recipe.distill_enabled or recipe.student is not None
    fp32 = "student-onnx-fp32" if students else "onnx-fp32"
    measured.append(file_opener(paths.model_onnx, task=task, encoder=enc.encoder, threads=v.threads, name=fp32))
    measured += [
        file_opener(path, task=task, encoder=enc.encoder, threads=v.threads, name=name, runtime=artifact.runtime)
        for artifact in artifacts
        for name, path in artifact.measured(paths)
    ]

    def bundle_on(runtime: str):
        return lambda: load_bundle(
            paths.root, runtime=runtime, threads=v.threads, verify=False, **v.runner_options(runtime)
        )

    setup = candidates_setup(run, artifacts, fp32)
    extra = [
        file_opener(
            paths.root / o.file,
            task=task,
            encoder=enc.encoder,
            threads=v.threads,
            name=o.name,
            runtime=o.runtime,
            **(o.options or {}),
        )
        for o in setup.offers
        if o.precision != "int8" and o.name != fp32  # the int8 plan is gated and the reference measured anyway
    ]
    gated = [bundle_on(r) for r in v.runtimes]
    report = judge(run, enc, measured=measured, gated=gated, variants=variants, extra=extra, setup=setup)
    set_default(run, report)
    quant = pressed.quant
    report.update(export=pressed.exported.report_section(), quantization=quant.report_section(recipe.quantize.mode))
    if seeds:
        report["quantization"]["calibration_seeds"] = [
            {"seed": recipe.calibration.seed, "name": "int8", "calibration_seconds": quant.summary.calibration_seconds},
            *({"seed": s, "name": f"int8-seed{s}", "calibration_seconds": t} for s, _, t in seeds),
        ]
    report["analysis"] = quant.analysis_section
    report.update(pressed.extras)
    return report


def candidates_setup(run: Run, artifacts: list, reference: str) -> Any:
    """Every candidate for the bundle's default (the runtimes' offers and ORT fp32, the reference)."""
    offers, notes = [reference_offer(reference)], []
    for artifact in artifacts:
        more, why = artifact.offers(recipe=run.recipe, target=run.target)
        offers += more
        notes += why
    return Setup(tuple(offers), reference, run.recipe.select.shape, run.target.name, tuple(notes))


def set_default(run: Run, report: dict[str, Any]) -> None:
    """``bundle.json`` names the selection's choice as what ``load(dir)`` opens; with
    ``select.keep = "chosen"`` the candidates not chosen leave the bundle (the fp32 export stays)."""
    selection = report.get("selection")
    if selection is None or not selection["passed"]:  # a failed run's bundle opens what the gate failed
        return
    drop = []
    if run.recipe.select.keep == "chosen":
        drop = [c["file"] for c in selection["candidates"] if c["file"] != selection["default"]["file"]]
    record_default(run.paths.root, selection["default"], drop=drop)


def _publish(run: Run, report: dict[str, Any]) -> RunOutcome:
    """The reports and the manifest, then the staging folder into place: ``<out>/<name>``, or
    ``<out>/<name>.rejected`` when the gate failed (never over the last passing bundle)."""
    recipe, staging = run.recipe, run.paths.root
    write_reports(report, staging)
    write_manifest(
        staging,
        recipe=recipe.to_dict(),
        task=run.task.describe(),
        metrics={k: m["metrics"] for k, m in report["models"].items()},
        gate=report["gate"],
        input_names=list(report["export"]["input_names"]),
        provenance=_provenance(run),
    )
    gate = GateResult.from_dict(report["gate"]) if report.get("gate") else None
    failed = gate is not None and not gate.passed
    final = rejected_dir(run.out_dir, recipe.name) if failed else run.out_dir / recipe.name
    publish(staging, final)
    return RunOutcome(final, gate)


def data_section(recipe: Recipe) -> dict[str, Any]:
    """report.json's ``data``: the calibration and eval files used, and whether each is the task's
    default (the recipe named none) rather than the user's."""
    return {
        "calibration": {"path": recipe.calibration.data, "default": not recipe.written("calibration.data")},
        "eval": {"path": recipe.validate.eval_data, "default": not recipe.written("validate.eval_data")},
    }


def _provenance(run: Run) -> dict[str, Any]:
    """The manifest's record of the models pressed (hub commit, weight sha256) and the target."""
    recipe = run.recipe
    source = {"teacher": model_source(recipe.teacher, run.teacher_ref, revision=recipe.revision)}
    if recipe.student is not None:
        source["student"] = model_source(recipe.student, resolve_model_ref(recipe.student))
    return {"source": source, "target": run.target.describe()}


def _label_names(config) -> list[str]:
    """Class / tag names by id, when the model has a label space."""
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label, key=int)] if id2label else []
