"""``modelpress run``: chain the stages of a recipe into a staging folder and publish the bundle.

This module only orders the stages; each lives in its package: distill (modelpress.distill.stage),
export (modelpress.export.stage), quantize (modelpress.runtimes.quantize.stage), engines
(modelpress.runtimes.tensorrt.stage), validation and the gate (modelpress.validate.stage). Data is
read before the teacher is loaded, so a bad file fails in a second. The bundle is written into a
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

from modelpress.calibration_data.feeds import ExampleFeed
from modelpress.errors import BadInputError
from modelpress.fileio import graph_input_shapes
from modelpress.lock import bundle_lock
from modelpress.modalities import get_modality
from modelpress.models import load_model, load_model_and_preprocessor, resolve_model_ref
from modelpress.paths import RunPaths, publish, recover, refuse_inside_bundle, rejected_dir, staging_dir
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


def _chain(recipe: Recipe, out_dir: Path, staging: Path, stack: contextlib.ExitStack) -> RunOutcome:
    from modelpress.bundle import load as load_bundle, write_bundle_meta
    from modelpress.distill.stage import distill_stage, untrained_subset
    from modelpress.export.stage import export_stage
    from modelpress.manifest import write_manifest
    from modelpress.runtimes.quantize.stage import quantize_stage
    from modelpress.validate.report import write_reports
    from modelpress.validate.stage import candidate_evaluator, file_opener, teacher_opener, validate_stage

    paths = RunPaths(staging)
    if recipe.source:
        shutil.copyfile(recipe.source, paths.recipe)
    teacher_ref = resolve_model_ref(recipe.teacher)
    task = configure_task(recipe.task, recipe.task_options,
                          model_dir=teacher_ref if Path(teacher_ref).is_dir() else None)
    modality = get_modality(task.modality)
    # every CPU-dependent choice of the plan follows the target, not this machine (7-bit weights)
    target = resolve_target(recipe.target)
    recipe = recipe.with_(quantize=recipe.quantize.for_target(target))
    log.info("target %s (%s)", target.name, "this machine" if target.detected else "declared")
    cal, v = recipe.calibration, recipe.validate

    engine_wanted = recipe.engine is not None and recipe.engine.enabled
    if engine_wanted:  # a machine without TensorRT or a GPU fails now, not after export and quantization
        from modelpress.runtimes.tensorrt.gpu import gpu_identity, require_tensorrt

        require_tensorrt()
        gpu_identity()
    if "openvino" in v.runtimes:  # likewise a machine without the openvino package
        from modelpress.runtimes.openvino_runner import require_openvino

        require_openvino()
    # the data first: a bad file fails in a second, not after loading and exporting
    cal_examples = modality.read_calibration(cal)
    log.info("loading teacher %s", teacher_ref)
    teacher_model, preprocessor = load_model_and_preprocessor(
        teacher_ref, task, trust_remote_code=recipe.trust_remote_code, allow_new_heads=recipe.allow_new_heads,
        seed=recipe.seed)
    # a length the user wrote that the model cannot take is refused; a default is clipped to fit
    from modelpress.recipe import fit_lengths

    fitted_sections, fitted = fit_lengths({"calibration": cal, "validate": v}, task=task, modality=modality,
                                          model_config=teacher_model.config, preprocessor=preprocessor,
                                          written=recipe.written)
    cal, v = fitted_sections["calibration"], fitted_sections["validate"]
    recipe = recipe.with_(calibration=cal, validate=v)  # what ran, in the manifest too
    limit = fitted.limit
    es = task.read_eval(v.eval_data, v, model_config=teacher_model.config, preprocessor=preprocessor)
    cal_examples = modality.calibration_set(cal, preprocessor, examples=cal_examples)

    deployed = teacher_model
    if recipe.distill_enabled:
        deployed = distill_stage(recipe, teacher_ref, task, out_dir, paths)
    elif recipe.student is not None:
        log.info("deploying the student %s", recipe.student)
        deployed = load_model(resolve_model_ref(recipe.student), task, trust_remote_code=recipe.trust_remote_code)
    students = recipe.distill_enabled or recipe.student is not None

    exported = export_stage(deployed, preprocessor, task=task, cfg=recipe.export, paths=paths)
    names = exported.result.input_names
    shapes = graph_input_shapes(paths.model_onnx)
    encoder = modality.encoder(preprocessor, input_names=names, max_length=v.max_length, input_shapes=shapes)
    cal_encoder = modality.encoder(preprocessor, input_names=names, max_length=cal.max_length, input_shapes=shapes)
    teacher = teacher_opener(teacher_model, task=task, encoder=encoder, threads=v.threads)

    evaluate = None
    if recipe.quantize.mode == "auto":
        evaluate = candidate_evaluator(task=task, teacher=teacher, encoder=encoder, eval_set=es, cfg=v,
                                       gate_cfg=recipe.gate)
    quant = quantize_stage(paths, ExampleFeed(cal_examples, cal_encoder, batch_size=cal.batch_size),
                           recipe.quantize, evaluate=evaluate, tensorrt_twin=engine_wanted,
                           openvino="openvino" in v.runtimes)
    write_bundle_meta(staging, task=task, input_names=names, max_length=v.max_length, max_positions=limit,
                      label_names=_label_names(deployed.config) if task.needs_labels else [],
                      runtimes=v.runtimes, input_shapes=shapes, target=target.describe())
    engines = []
    if engine_wanted:
        from modelpress.runtimes.tensorrt.stage import build_engines

        log.info("building TensorRT engine(s)")
        engines = list(build_engines(staging, recipe.engine, modality=task.modality))

    variants, seeds = [], []
    work = stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{recipe.name}.seeds-", dir=out_dir))
    if recipe.quantize.calibration_seeds > 1:
        from modelpress.runtimes.quantize.stage import seed_variants

        log.info("calibrating %d more times on other samples (quantize.calibration_seeds)",
                 recipe.quantize.calibration_seeds - 1)
        feeds = [(cal.seed + k, ExampleFeed(modality.calibration_set(cal, preprocessor, seed=cal.seed + k), cal_encoder,
                                            batch_size=cal.batch_size))
                 for k in range(1, recipe.quantize.calibration_seeds)]
        seeds = seed_variants(paths.model_onnx, feeds, quant, recipe.quantize, Path(work))
        variants = [file_opener(path, task=task, encoder=encoder, threads=v.threads, name=f"int8-seed{seed}")
                    for seed, path, _ in seeds]

    log.info("validating against the fp32 teacher")
    candidates = []
    subset = untrained_subset(paths.student, teacher_model) if recipe.distill_enabled else None
    if subset is not None:  # what distillation started from, to show what it bought
        candidates.append(teacher_opener(subset, task=task, encoder=encoder, threads=v.threads,
                                         name="untrained-subset-fp32"))
    candidates.append(file_opener(paths.model_onnx, task=task, encoder=encoder, threads=v.threads,
                                  name="student-onnx-fp32" if students else "onnx-fp32"))
    if paths.model_plan.is_file():
        candidates.append(file_opener(paths.model_plan, task=task, encoder=encoder, threads=v.threads,
                                      name="tensorrt-int8", runtime="tensorrt"))
    # the gated candidate: the bundle itself (its manifest is written after validation), on each of
    # its runtimes
    def bundle_on(runtime: str):
        return lambda: load_bundle(staging, runtime=runtime, threads=v.threads, verify=False,
                                   **v.runner_options(runtime))

    candidates.append(bundle_on(v.runtimes[0]))
    report = validate_stage(task=task, cfg=v, gate_cfg=recipe.gate, teacher=teacher, candidates=candidates,
                            eval_set=es, name=recipe.name, variants=variants,
                            other_runtimes=[bundle_on(r) for r in v.runtimes[1:]])
    report["defaults_clipped"] = dict(fitted.clipped)
    report["target"] = target.describe()
    report["export"] = exported.report_section()
    report["quantization"] = quant.report_section(recipe.quantize.mode)
    if seeds:
        report["quantization"]["calibration_seeds"] = [
            {"seed": cal.seed, "name": "int8", "calibration_seconds": quant.summary.calibration_seconds},
            *({"seed": s, "name": f"int8-seed{s}", "calibration_seconds": t} for s, _, t in seeds)]
    report["analysis"] = quant.analysis_section
    if engines:
        report["engines"] = engines
    write_reports(report, staging)
    write_manifest(staging, recipe=recipe.to_dict(), task=task.describe(),
                   metrics={k: m["metrics"] for k, m in report["models"].items()}, gate=report["gate"],
                   input_names=list(names))
    gate = GateResult.from_dict(report["gate"]) if report.get("gate") else None
    # a failed verdict is kept for inspection beside the last passing bundle, never over it
    final = rejected_dir(out_dir, recipe.name) if gate is not None and not gate.passed else out_dir / recipe.name
    publish(staging, final)
    return RunOutcome(final, gate)


def _label_names(config) -> list[str]:
    """Class / tag names by id, when the model has a label space."""
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label, key=int)] if id2label else []
