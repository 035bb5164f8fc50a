"""The stages of a recipe run, each reading and writing files of one run folder.

``run_recipe`` chains distill → export → quantize → validate → gate into a staging folder and
publishes it as ``<out>/<name>`` when everything (including the manifest) is written. The stage
functions are also what the single-stage CLI commands call on a user's own files.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelpress.calibration_data.feeds import TokenizedFeed
from modelpress.calibration_data.loaders import load_texts, sample
from modelpress.bundle import load as load_bundle, write_bundle_meta
from modelpress.errors import BadInputError
from modelpress.inference import Predictor
from modelpress.manifest import write_manifest
from modelpress.models import load_model_and_tokenizer, resolve_model_ref
from modelpress.paths import RunPaths, publish, staging_dir
from modelpress.recipe import Recipe
from modelpress.tasks import make_head
from modelpress.runtimes.onnxruntime_runner import OnnxRuntimeRunner
from modelpress.runtimes.quantize.config import QuantizeConfig
from modelpress.runtimes.quantize.static import QuantizeSummary
from modelpress.runtimes.torch_runner import TorchRunner
from modelpress.validate.compare import evaluate, file_size_mb, ratios
from modelpress.validate.evalsets import load_eval_set
from modelpress.validate.gate import GateResult, decide
from modelpress.validate.report import REPORT_SCHEMA, write_reports

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    bundle: Path
    gate: GateResult | None


def calibration_texts(recipe: Recipe) -> list[str]:
    cal = recipe.calibration
    return sample(load_texts(cal.data, text_field=cal.text_field), cal.num_samples, seed=cal.seed)


def calibration_feed(recipe: Recipe, tokenizer, input_names, texts: list[str] | None = None) -> TokenizedFeed:
    """The recipe's calibration batches (``texts``: already loaded calibration texts)."""
    cal = recipe.calibration
    return TokenizedFeed(calibration_texts(recipe) if texts is None else texts, tokenizer,
                         batch_size=cal.batch_size, max_length=cal.max_length, input_names=tuple(input_names))


@dataclass
class QuantizeOutcome:
    summary: QuantizeSummary
    analysis: list            # NodeError, worst first
    auto: dict | None         # the accuracy-aware search (mode "auto")
    plan: object = None       # runtimes.quantize.static.QuantPlan of the written model


def quantize_stage(onnx_path: Path, out_path: Path, feed: TokenizedFeed, cfg: QuantizeConfig, *,
                   evaluate=None) -> QuantizeOutcome:
    """Static int8 (or the accuracy-aware search when ``cfg.mode == "auto"``) plus per-node analysis."""
    from modelpress.runtimes.quantize.analysis import analyze_plan
    from modelpress.runtimes.quantize.auto import auto_quantize
    from modelpress.runtimes.quantize.static import plan_quantization, write_quantized

    if cfg.mode == "auto":
        if evaluate is None:
            raise BadInputError('quantize.mode = "auto" needs an eval set and the teacher (use `modelpress run`)')
        result = auto_quantize(onnx_path, out_path, feed, cfg, evaluate=evaluate)
        return QuantizeOutcome(result.summary, result.analysis, result.to_dict(), result.plan)
    plan = plan_quantization(onnx_path, feed, cfg)
    summary = write_quantized(plan, out_path)
    return QuantizeOutcome(summary, analyze_plan(plan, feed), None, plan)


def candidate_evaluator(task: str, head, tokenizer, teacher_out, es, validate_cfg, gate_cfg, teacher_metrics):
    """A callable for the auto search: ONNX path → Evaluation (gate metric through ONNX Runtime)."""
    import numpy as np

    from modelpress.runtimes.quantize.auto import Evaluation
    from modelpress.validate.compare import fidelity
    from modelpress.validate.latency import time_calls

    def evaluate(path: Path) -> Evaluation:
        runner = OnnxRuntimeRunner(path, threads=validate_cfg.threads, name="candidate").__enter__()
        try:
            pred = Predictor(runner, head, tokenizer, max_length=validate_cfg.max_length)
            metrics = fidelity(task, teacher_out, pred.predict(list(es.texts), batch_size=validate_cfg.batch_size), es)
            gate = decide(task, teacher_metrics, metrics, max_drop=gate_cfg.max_drop, metric=gate_cfg.metric)
            feed = pred.encode([es.texts[i % len(es.texts)] for i in range(max(validate_cfg.batch_sizes))],
                               pad_to=max(validate_cfg.seq_lengths))
            times = time_calls(lambda: pred.predict_feed(feed), runs=5, warmup=1)
        finally:
            runner.close()
        score = -gate.candidate if gate.metric == "mean_kl" else gate.candidate
        return Evaluation(score, gate.drop, gate.passed, 1e3 * float(np.median(times)))

    return evaluate


def teacher_predictor(model, tokenizer, head, input_names, *, threads: int, max_length: int,
                      name: str = "teacher") -> Predictor:
    runner = TorchRunner(model, input_names=tuple(input_names), output_name=head.output_name,
                         output_fn=head.torch_output, threads=threads, name=name)
    return Predictor(runner, head, tokenizer, max_length=max_length, name=name)


def fp32_onnx_predictor(onnx_path: Path, head, tokenizer, *, threads: int, max_length: int,
                        name: str = "onnx-fp32") -> Predictor:
    runner = OnnxRuntimeRunner(onnx_path, threads=threads, name=name).__enter__()
    return Predictor(runner, head, tokenizer, max_length=max_length, name=name)


def validate_stage(*, task: str, cfg, gate_cfg, head, tokenizer, teacher_model, input_names,
                   candidates: list[Predictor], name: str, eval_set=None) -> dict[str, Any]:
    """Evaluate entered candidate predictors (the last one is gated) against the PyTorch teacher."""
    es = eval_set or load_eval_set(cfg.eval_data, fmt=cfg.eval_format, text_field=cfg.text_field,
                                   label_field=cfg.label_field, num_samples=cfg.num_samples)
    teacher = teacher_predictor(teacher_model, tokenizer, head, input_names, threads=cfg.threads,
                                max_length=cfg.max_length)
    sizes = {c.name: file_size_mb(c.runner.model_path) for c in candidates if hasattr(c.runner, "model_path")}
    with teacher.runner:
        try:
            models = evaluate(task, teacher, candidates, es, cfg, sizes_mb=sizes)
        finally:
            for c in candidates:
                c.runner.close()
    gated = candidates[-1].name
    gate = decide(task, models["teacher"]["metrics"], models[gated]["metrics"],
                  max_drop=gate_cfg.max_drop, metric=gate_cfg.metric, candidate_name=gated)
    return {
        "schema": REPORT_SCHEMA,
        "name": name,
        "task": task,
        "head": head.describe(),
        "eval": {"source": es.source, "format": es.format, "num_texts": len(es.texts),
                 "num_pairs": len(es.pairs or ()), "has_labels": es.labels is not None},
        "models": models,
        "ratios": {n: ratios(models, reference="teacher", candidate=n) for n in models if n != "teacher"},
        "gate": gate.to_dict(),
    }


def run_recipe(recipe: Recipe, out_dir: Path) -> RunOutcome:
    out_dir = Path(out_dir)
    staging = staging_dir(out_dir, recipe.name)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        return _run_stages(recipe, out_dir, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written stays behind
        raise


def _run_stages(recipe: Recipe, out_dir: Path, staging: Path) -> RunOutcome:
    paths = RunPaths(staging)
    if recipe.source:
        shutil.copyfile(recipe.source, paths.recipe)

    # read the data first: a bad file should fail in a second, not after loading and exporting
    cal_texts = calibration_texts(recipe)
    v = recipe.validate
    es = load_eval_set(v.eval_data, fmt=v.eval_format, text_field=v.text_field, label_field=v.label_field,
                       num_samples=v.num_samples)
    teacher_ref = resolve_model_ref(recipe.teacher)
    head = make_head(recipe.task, model_dir=teacher_ref if Path(teacher_ref).is_dir() else None,
                     options=recipe.task_options)
    log.info("loading teacher %s", teacher_ref)
    teacher_model, tokenizer = load_model_and_tokenizer(teacher_ref, head, trust_remote_code=recipe.trust_remote_code)

    deployed_model = teacher_model
    if recipe.distill_enabled:
        deployed_model = distill_stage(recipe, teacher_ref, head, out_dir, paths)
    elif recipe.student is not None:
        log.info("deploying the student %s", recipe.student)
        deployed_model, _ = load_model_and_tokenizer(resolve_model_ref(recipe.student), head,
                                                     trust_remote_code=recipe.trust_remote_code)
    students = recipe.distill_enabled or recipe.student is not None

    from modelpress.export.onnx_export import export_onnx

    log.info("exporting %s", paths.model_onnx)
    exported = export_onnx(deployed_model, tokenizer, paths.model_onnx, head=head, opset=recipe.export.opset,
                           atol=recipe.export.atol)
    tokenizer.save_pretrained(str(paths.tokenizer))
    deployed_model.config.to_json_file(str(paths.config))
    if recipe.export.fuse:
        from modelpress.export.fusion import fuse_model

        fuse_model(paths.model_onnx, paths.model_fused_onnx, model=deployed_model, tokenizer=tokenizer, head=head,
                   input_names=exported.input_names, atol=recipe.export.fuse_atol)

    log.info("quantizing to %s", paths.model_int8_onnx)
    feed = calibration_feed(recipe, tokenizer, exported.input_names, cal_texts)
    evaluate = None
    if recipe.quantize.mode == "auto":
        evaluate = _auto_evaluator(recipe, es, head, tokenizer, teacher_model, exported.input_names)
    quant = quantize_stage(paths.model_onnx, paths.model_int8_onnx, feed, recipe.quantize, evaluate=evaluate)
    summary = quant.summary
    analysis = write_analysis(quant.analysis, paths)
    engine_wanted = recipe.engine is not None and recipe.engine.enabled
    if engine_wanted and not recipe.quantize.tensorrt_readable:
        from modelpress.runtimes.quantize.static import for_tensorrt, write_quantized

        # same calibration, TensorRT's Q/DQ rules (symmetric, zero point 0): the engine's source
        write_quantized(for_tensorrt(quant.plan), paths.model_int8_trt_onnx,
                        keep_fp32=tuple(summary.fp32_nodes))
    paths.quantization_json.write_text(json.dumps({**summary.to_dict(), "auto": quant.auto}, indent=2) + "\n",
                                       encoding="utf-8")
    write_bundle_meta(staging, head=head.describe(), input_names=exported.input_names,
                      max_length=recipe.validate.max_length)
    engines = []
    if engine_wanted:
        from modelpress.runtimes.tensorrt.stage import build_engines

        log.info("building TensorRT engine(s)")
        engines = list(build_engines(staging, recipe.engine))

    log.info("validating against the fp32 teacher")
    candidates = []
    subset = _untrained_subset(paths.student, teacher_model) if recipe.distill_enabled else None
    if subset is not None:  # what distillation started from, to show what it bought
        candidates.append(teacher_predictor(subset, tokenizer, head, exported.input_names, threads=v.threads,
                                            max_length=v.max_length, name="untrained-subset-fp32"))
        candidates[-1].runner.__enter__()
    candidates.append(fp32_onnx_predictor(paths.model_onnx, head, tokenizer, threads=v.threads,
                                          max_length=v.max_length,
                                          name="student-onnx-fp32" if students else "onnx-fp32"))
    if paths.model_plan.is_file():
        from modelpress.runtimes.tensorrt.runner import TensorRTRunner

        runner = TensorRTRunner(paths.model_plan).__enter__()
        candidates.append(Predictor(runner, head, tokenizer, max_length=v.max_length, name="tensorrt-int8"))
    candidates.append(load_bundle(staging, threads=v.threads))  # the gated candidate: the bundle itself
    report = validate_stage(task=recipe.task, cfg=v, gate_cfg=recipe.gate, head=head, tokenizer=tokenizer,
                            teacher_model=teacher_model, input_names=exported.input_names,
                            candidates=candidates, name=recipe.name, eval_set=es)
    report["export"] = {"opset": exported.opset, "seconds": exported.seconds, "input_names": list(exported.input_names),
                        "parity_max_abs_diff": exported.parity.max_abs_diff,
                        "parity_batch_shape": list(exported.parity.feed_shape)}
    report["quantization"] = {**{key: val for key, val in summary.to_dict().items() if key != "tensors"},
                              "mode": recipe.quantize.mode, "auto": quant.auto}
    report["analysis"] = analysis
    if engines:
        report["engines"] = engines
    write_reports(report, staging)
    write_manifest(staging, recipe=recipe.to_dict(), head=head.describe(),
                   metrics={k: m["metrics"] for k, m in report["models"].items()}, gate=report["gate"],
                   input_names=list(exported.input_names))
    final = out_dir / recipe.name
    publish(staging, final)
    return RunOutcome(final, GateResult(**report["gate"]))


def _untrained_subset(student_dir: Path, teacher_model):
    """The layer-subset student before training (None for other kinds of student): the teacher
    layers the distillation kept, as its ``distill.json`` records them (``layer_selection`` may
    have chosen them)."""
    from modelpress.distill.student import build_layer_subset

    summary = student_dir / "distill.json"
    layers = json.loads(summary.read_text(encoding="utf-8")).get("kept_layers") if summary.is_file() else None
    return None if not layers else build_layer_subset(teacher_model, layers).eval()


def _auto_evaluator(recipe: Recipe, es, head, tokenizer, teacher_model, input_names):
    v = recipe.validate
    teacher = teacher_predictor(teacher_model, tokenizer, head, input_names, threads=v.threads,
                                max_length=v.max_length)
    with teacher.runner:
        teacher_out = teacher.predict(list(es.texts), batch_size=v.batch_size)
    from modelpress.validate.compare import fidelity

    teacher_metrics = fidelity(recipe.task, teacher_out, None, es)
    return candidate_evaluator(recipe.task, head, tokenizer, teacher_out, es, v, recipe.gate, teacher_metrics)


def write_analysis(errors: list, paths: RunPaths, *, top: int = 15) -> dict[str, Any]:
    """analysis.json (every node) and plots/sensitivity.png; returns the report's summary of it."""
    from modelpress.runtimes.quantize.analysis import plot_errors

    rows = [e.to_dict() for e in errors]
    (paths.root / "analysis.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    plot = plot_errors(errors, paths.plots / "sensitivity.png")
    return {"nodes": len(rows), "worst": rows[:top],
            "plot": str(plot.relative_to(paths.root)) if plot else None}


def _distill_task_options(head) -> dict:
    return {k: v for k, v in head.describe().items() if k != "task"}


def distill_stage(recipe: Recipe, teacher_ref: str, head, out_dir: Path, paths: RunPaths):
    """Train (or reuse) the student, copy it into the bundle, return it loaded for export."""
    from modelpress.distill.pipeline import run_distillation
    from modelpress.models import load_model_and_tokenizer as _load

    work = out_dir / f"{recipe.name}.distill"
    student_dir = run_distillation(recipe.distill, teacher=teacher_ref, task=recipe.task,
                                   task_options=_distill_task_options(head), out_dir=work)
    shutil.copytree(student_dir, paths.student)
    student, _ = _load(str(paths.student), head)
    return student


def run_distill_only(recipe: Recipe, out_dir: Path) -> Path:
    """``modelpress distill``: train the student into ``<out>/<name>.distill/student``."""
    from modelpress.distill.pipeline import run_distillation

    if recipe.distill is None:
        raise BadInputError("distill: the recipe has no [distill] section")
    teacher_ref = resolve_model_ref(recipe.teacher)
    head = make_head(recipe.task, model_dir=teacher_ref if Path(teacher_ref).is_dir() else None,
                     options=recipe.task_options)
    return run_distillation(recipe.distill, teacher=teacher_ref, task=recipe.task,
                            task_options=_distill_task_options(head),
                            out_dir=Path(out_dir) / f"{recipe.name}.distill")


def analyze_run(run_dir: Path, out_dir: Path):
    """``modelpress analyze``: re-plan the run's quantization (same recipe and calibration data, the
    calibration method it chose) and write analysis.json + plots/sensitivity.png into ``out_dir``
    (the bundle's own files, listed in its manifest, are left untouched)."""
    from transformers import AutoTokenizer

    from modelpress.recipe import load_recipe
    from modelpress.runtimes.quantize.analysis import analyze_plan
    from modelpress.runtimes.quantize.static import plan_quantization

    paths = RunPaths(Path(run_dir))
    for needed in (paths.model_onnx, paths.recipe, paths.tokenizer, paths.quantization_json):
        if not needed.exists():
            raise BadInputError(f"{run_dir}: no {needed.name} (not a completed modelpress run)")
    recipe = load_recipe(paths.recipe)
    done = json.loads(paths.quantization_json.read_text(encoding="utf-8"))
    cfg = recipe.quantize.with_(mode="static", calibration_method=done["calibration_method"])
    tokenizer = AutoTokenizer.from_pretrained(str(paths.tokenizer))
    import onnx

    names = tuple(i.name for i in onnx.load(str(paths.model_onnx), load_external_data=False).graph.input)
    feed = calibration_feed(recipe, tokenizer, names)
    plan = plan_quantization(paths.model_onnx, feed, cfg)
    errors = analyze_plan(plan, feed)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_analysis(errors, RunPaths(out_dir))
    return errors


def engine_stage(run_dir: Path, *, fp16: bool = False) -> Path:
    """``modelpress engine``: TensorRT plan(s) from the run's Q/DQ model (GPU + TensorRT required).

    The engine settings come from the run's recipe ``[engine]`` table when it has one.
    """
    from modelpress.runtimes.tensorrt.config import EngineConfig
    from modelpress.runtimes.tensorrt.stage import build_engines

    paths = RunPaths(Path(run_dir))
    if not paths.model_int8_onnx.is_file():
        raise BadInputError(f"{run_dir}: no model.int8.onnx (run the pipeline first)")
    cfg = None
    if paths.recipe.is_file():
        from modelpress.recipe import load_recipe

        cfg = load_recipe(paths.recipe).engine
    cfg = cfg or EngineConfig()
    if fp16:
        from dataclasses import replace

        cfg = replace(cfg, precision="both")
    build_engines(paths.root, cfg)
    return paths.model_plan
