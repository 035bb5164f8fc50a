"""Every artifact path of a run folder, named in one place, and the staged publish of a bundle.

Layout of ``--out`` (``artifacts/`` by default) for a recipe named ``<name>``::

    <name>/             the last bundle that passed its gate (manifest verdict "pass"): what deploys
    <name>.rejected/    the last run whose gate failed: complete, report included, for inspection;
                        ``load()`` refuses it unless ``allow_failed=True``; the next failed run
                        replaces it, a passing run leaves it alone
    <name>.analysis/    ``modelpress analyze <name>``'s output (never inside the bundle: it would
                        break the manifest)
    <name>.stages/      ``make export|quantize|validate``'s single-stage files
    <name>.distill/     ``modelpress distill``'s checkpoints and student
    .<name>.lock        the lock of one run at a time

A run holds the bundle's lock (``.<name>.lock``), is staged in a folder of its own,
``<out>/.<name>.partial-<pid>-<random>``, and is renamed to ``<out>/<name>`` (or to
``<out>/<name>.rejected`` when its gate failed) when complete, so an interrupted or concurrent run
never leaves a folder that looks like a finished bundle, and a failed verdict never takes the place
of the last passing bundle. The swap moves the previous folder to ``.<final>.old`` first; a run
interrupted between the two renames leaves that folder behind, and the next run of the name puts it
back (:func:`recover`).

``--out`` (of ``run``, the stage commands and ``analyze``) must not be a bundle or inside one
(:func:`refuse_inside_bundle`): writing there would nest a second bundle in the first, or add files
its manifest does not list.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from modelpress.errors import BadInputError
import json

# Every file name a run, a bundle or a report folder holds lives here (RunPaths joins them to a folder).
MODEL_ONNX = "model.onnx"  # the fp32 export
MODEL_FUSED_ONNX = "model.fused.onnx"
MODEL_INT8_ONNX = "model.int8.onnx"  # static W8A8 (int8 weights and activations): the plan's own model
MODEL_INT4_ONNX = "model.int4.onnx"  # weight-only int4 (MatMulNBits 4 bits, activations fp32)
MODEL_W8_ONNX = "model.w8.onnx"  # weight-only int8 (MatMulNBits 8 bits, activations fp32)
#: the pressed model ONNX Runtime ships, by what it holds (the report's row and candidate name too).
#: "int8" is what static int8 has always been called (W8A8, Optimum's and ORT's ``quantize_static``);
#: "int4" is weight-only wherever LLM users meet it (onnxruntime-genai's ``-p int4``, OpenVINO's
#: ``--weight-format int4``), so it needs no qualifier; 8-bit weights exist in both forms, so the
#: weight-only one is "w8" (8-bit weights, float activations), never mistaken for W8A8.
PRESSED_FILES = {"int8": MODEL_INT8_ONNX, "int4": MODEL_INT4_ONNX, "w8": MODEL_W8_ONNX}
MODEL_INT8_TRT_ONNX = "model.int8.trt.onnx"  # TensorRT's Q/DQ twin
MODEL_FP16_ONNX = "model.fp16.onnx"
OPENVINO_XML = "openvino/model.xml"  # the OpenVINO IR (with its .bin beside it)
#: OpenVINO GenAI's folder (LLMPipeline opens it): the stateful IR beside its tokenizer IRs
OPENVINO_GENAI_XML = "openvino_genai/openvino_model.xml"
#: engine files (the TensorRT stage writes them under these names)
INT8_PLAN, FP16_PLAN = "model.plan", "model.fp16.plan"
ENGINE_JSON, ENGINE_FP16_JSON = "engine.json", "engine.fp16.json"
TIMING_CACHE = "timing.cache"  # TensorRT's timing cache, shared by the builds of one run folder
BUNDLE_JSON = "bundle.json"
QUANTIZATION_JSON = "quantization.json"
ANALYSIS_JSON = "analysis.json"
REPORT_JSON, REPORT_MD = "report.json", "report.md"
RECIPE_TOML = "recipe.toml"
MANIFEST_JSON = "manifest.json"
DISTILL_JSON = "distill.json"  # what a distilled student records of its distillation (in its folder)
#: ``<out>/<name>.rejected``: a run whose gate failed
REJECTED_SUFFIX = ".rejected"
#: the suffixes of the folders beside a bundle (a recipe name may not end in one: its bundle would
#: be taken for another's rejected run, analysis, stage files or distillation)
SIBLING_SUFFIXES = (REJECTED_SUFFIX, ".analysis", ".stages", ".distill")


def pressed_precision(mode: str, weight_bits: int) -> str:
    """What a quantize config's model holds (a key of :data:`PRESSED_FILES`): ``"int4"`` / ``"w8"``
    for weight-only 4 / 8 bits, ``"int8"`` for static and auto (W8A8; 7-bit weights included)."""
    if mode == "weight-only":
        return "int4" if weight_bits == 4 else "w8"
    return "int8"


def precision_of_file(file: str) -> str | None:
    """The precision a bundle file name says it holds (:data:`PRESSED_FILES`), else None. A bundle
    from before the names followed the precision keeps weight-only weights in ``model.int8.onnx``:
    its row stays "int8", what its bundle.json lists is what loads."""
    return next((p for p, f in PRESSED_FILES.items() if f == file), None)


@dataclass(frozen=True)
class RunPaths:
    root: Path
    precision: str = "int8"  # what the pressed model holds (PRESSED_FILES): its file name

    # models
    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def model_onnx(self) -> Path:
        return self.root / MODEL_ONNX

    @property
    def model_fused_onnx(self) -> Path:
        return self.root / MODEL_FUSED_ONNX

    @property
    def pressed_onnx(self) -> Path:
        """The quantize stage's model (ONNX Runtime's artifact), named by what it holds."""
        return self.root / PRESSED_FILES[self.precision]

    @property
    def model_int8_trt_onnx(self) -> Path:
        return self.root / MODEL_INT8_TRT_ONNX

    @property
    def model_fp16_onnx(self) -> Path:
        return self.root / MODEL_FP16_ONNX

    @property
    def openvino_xml(self) -> Path:
        return self.root / OPENVINO_XML

    @property
    def model_plan(self) -> Path:
        return self.root / INT8_PLAN

    @property
    def model_fp16_plan(self) -> Path:
        return self.root / FP16_PLAN

    @property
    def engine_json(self) -> Path:
        return self.root / ENGINE_JSON

    @property
    def engine_fp16_json(self) -> Path:
        return self.root / ENGINE_FP16_JSON

    @property
    def timing_cache(self) -> Path:
        return self.root / TIMING_CACHE

    # what inference needs besides the model
    def preprocessor(self, modality) -> Path:
        """The preprocessor folder (``tokenizer/`` for text)."""
        return self.root / modality.preprocessor_dir

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def bundle_json(self) -> Path:
        return self.root / BUNDLE_JSON

    # how it was made and how good it is
    @property
    def quantization_json(self) -> Path:
        return self.root / QUANTIZATION_JSON

    @property
    def analysis_json(self) -> Path:
        return self.root / ANALYSIS_JSON

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def sensitivity_plot(self) -> Path:
        return self.plots / "sensitivity.png"

    @property
    def report_json(self) -> Path:
        return self.root / REPORT_JSON

    @property
    def report_md(self) -> Path:
        return self.root / REPORT_MD

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE_TOML

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_JSON


def staging_dir(out_dir: Path, name: str) -> Path:
    """A new staging folder name, unique to this run."""
    return out_dir / f".{name}.partial-{os.getpid()}-{secrets.token_hex(4)}"


def rejected_dir(out_dir: Path, name: str) -> Path:
    """Where a run whose gate failed is published (never over ``<out>/<name>``)."""
    return Path(out_dir) / f"{name}{REJECTED_SUFFIX}"


def analysis_dir(bundle: Path) -> Path:
    """``modelpress analyze``'s default output: a sibling of the bundle, ``<bundle>.analysis``."""
    bundle = Path(bundle)
    if bundle.name in ("", ".."):  # "." or "..": name the folder itself
        bundle = bundle.resolve()
    return bundle.with_name(f"{bundle.name}.analysis")


def recover(out_dir: Path, name: str) -> list[str]:
    """Under the bundle's lock: undo what an interrupted run left (its staging folders; a previous
    bundle or rejected run parked as ``.<final>.old`` by an interrupted swap goes back in place when
    ``<final>`` is missing, else is removed). Returns what was done, for the log."""
    done = []
    for final_name in (name, f"{name}{REJECTED_SUFFIX}"):
        final, old = out_dir / final_name, out_dir / f".{final_name}.old"
        if old.is_dir():
            if final.exists():
                shutil.rmtree(old)
                done.append(f"removed {old.name}")
            else:
                os.replace(old, final)
                done.append(f"restored {final_name} from {old.name}")
    for stale in out_dir.glob(f".{name}.partial*"):
        shutil.rmtree(stale, ignore_errors=True)
        done.append(f"removed {stale.name}")
    return done


def distill_dir(out_dir: Path, name: str) -> Path:
    """Where ``modelpress distill`` trains a recipe's student (checkpoints, the student folder)."""
    return out_dir / f"{name}.distill"


def refuse_to_replace(final: Path) -> None:
    """BadInputError unless ``final`` is absent, an empty folder, or a modelpress bundle (a passing
    or a rejected run): publishing replaces what is there, and ``--out .`` with a recipe named like
    the teacher's folder would otherwise delete the teacher."""
    final = Path(final)
    if not final.exists() and not final.is_symlink():
        return
    if final.is_dir() and not final.is_symlink() and (is_bundle(final) or not any(final.iterdir())):
        return
    what = (
        "a link" if final.is_symlink() else "a folder that is not a modelpress bundle" if final.is_dir() else "a file"
    )
    raise BadInputError(
        f"{final}: is {what}, which publishing the run there would delete; move it, or give "
        "another --out or recipe name"
    )


def publish(staging: Path, final: Path) -> None:
    """Move a completed staging folder into place, replacing an older run of the same name (never
    anything else: :func:`refuse_to_replace`)."""
    refuse_to_replace(final)
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)


def is_bundle(folder: Path) -> bool:
    """A folder holding modelpress's ``bundle.json`` (a task and input names), or a modelpress
    ``manifest.json`` (a schema and a file list) that is not a single-stage report's (``modelpress
    validate --out`` writes one of kind ``"report"`` beside the stage files). The names alone are
    not enough: a web app's ``manifest.json`` or another tool's ``bundle.json`` in a project folder
    would make every ``--out`` below it refused."""
    folder = Path(folder)
    meta = _json_object(folder / "bundle.json")
    if meta is not None and isinstance(meta.get("task"), dict) and "input_names" in meta:
        return True
    manifest = _json_object(folder / "manifest.json")
    return (
        manifest is not None
        and "schema" in manifest
        and isinstance(manifest.get("files"), dict)
        and manifest.get("kind", "bundle") != "report"
    )


def _json_object(path: Path) -> dict | None:
    """The JSON object in ``path``; None when there is none (absent, unreadable, not an object)."""

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def enclosing_bundle(path: Path) -> Path | None:
    """``path`` itself or the nearest folder above it that is a bundle, else None."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.is_dir() and is_bundle(folder):
            return folder
    return None


def refuse_inside_bundle(path: Path, what: str = "--out") -> None:
    """BadInputError when ``path`` (a folder to write into, or a file to write) is a bundle or inside
    one: a run there would nest its bundle in the other, a stage's file would be one the manifest
    does not list."""
    bundle = enclosing_bundle(path)
    if bundle is not None:
        where = "is a modelpress bundle" if bundle == Path(path).absolute() else f"is inside the bundle {bundle}"
        raise BadInputError(f"{what} {path}: {where}; write outside it (e.g. into {bundle.parent})")
