"""The commands that act on a finished run folder: ``modelpress analyze`` (re-plan its quantization and
write the per-node error beside the bundle) and ``modelpress engine`` (build its TensorRT plans).

Place in the layers: beside the CLI, above the pipeline; they read the run's recipe and bundle metadata and
call the quantize stage and the TensorRT runtime, so neither of those climbs back up to the recipe or bundle.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from modelpress.bundle import read_bundle_meta
from modelpress.calibration_data.feeds import ExampleFeed
from modelpress.errors import BadInputError
from modelpress.modalities import get_modality
from modelpress.paths import MODEL_INT8_ONNX, RunPaths, analysis_dir, refuse_inside_bundle
from modelpress.quantize.analysis import analyze_plan
from modelpress.quantize.stage import write_analysis
from modelpress.quantize.static import plan_quantization
from modelpress.recipe import load_recipe
from modelpress.runtimes.tensorrt.config import EngineConfig
from modelpress.runtimes.tensorrt.stage import build_engines
from modelpress.tasks import task_from_dict


def analyze_run(run_dir: Path, out_dir: Path | None = None):
    """``modelpress analyze``: re-plan the run's quantization (same recipe and calibration data, the
    calibration method it chose) and write analysis.json + plots/sensitivity.png into ``out_dir``,
    by default ``<run_dir>.analysis`` beside the bundle. Never inside a bundle (BadInputError): a
    file its manifest does not list would make ``gate`` and ``load()`` refuse it."""
    out_dir = Path(out_dir) if out_dir is not None else analysis_dir(Path(run_dir))
    refuse_inside_bundle(out_dir)
    paths = RunPaths(Path(run_dir))
    for needed in (paths.model_onnx, paths.recipe, paths.bundle_json, paths.quantization_json):
        if not needed.exists():
            raise BadInputError(f"{run_dir}: no {needed.name} (not a completed modelpress run)")
    recipe = load_recipe(paths.recipe)
    meta = read_bundle_meta(paths.root)
    task = task_from_dict(meta["task"])
    modality = get_modality(task.modality)
    done = json.loads(paths.quantization_json.read_text(encoding="utf-8"))
    # a weight-only run calibrated nothing: analyze what static int8 would do, with the recipe's method
    method = done["calibration_method"] if done["calibration_method"] != "none" else recipe.quantize.calibration_method
    cfg = recipe.quantize.with_(mode="static", calibration_method=method)
    preprocessor = modality.load_preprocessor(str(paths.preprocessor(modality)))
    encoder = modality.encoder(
        preprocessor,
        input_names=meta["input_names"],
        max_length=recipe.calibration.max_length,
        input_shapes=meta.get("input_shapes"),
    )
    cal = recipe.calibration
    feeds = ExampleFeed(modality.calibration_set(cal, preprocessor), encoder, batch_size=cal.batch_size)
    plan = plan_quantization(paths.model_onnx, feeds, cfg)
    errors = analyze_plan(plan, feeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_analysis(errors, RunPaths(out_dir))
    return errors


def engine_stage(run_dir: Path, *, fp16: bool = False) -> Path:
    """``modelpress engine RUN_DIR``: TensorRT plan(s) from the run's Q/DQ model (GPU + TensorRT).

    The engine settings come from the run's recipe ``[engine]`` table when it has one.
    """
    paths = RunPaths(Path(run_dir))
    if not paths.pressed_onnx.is_file():
        raise BadInputError(f"{run_dir}: no {MODEL_INT8_ONNX} (run the pipeline first)")
    cfg = None
    if paths.recipe.is_file():
        cfg = load_recipe(paths.recipe).engine
    cfg = cfg or EngineConfig()
    if fp16:
        cfg = replace(cfg, precision="both")
    modality = task_from_dict(read_bundle_meta(paths.root)["task"]).modality
    build_engines(paths.root, cfg, modality=modality)
    return paths.model_plan
