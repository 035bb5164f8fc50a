"""Every artifact path of a run folder, named in one place, and the staged publish of a bundle.

A run holds the bundle's lock (``modelpress.lock``), is staged in a folder of its own,
``<out>/.<name>.partial-<pid>-<random>``, and is renamed to ``<out>/<name>`` when complete, so an
interrupted or concurrent run never leaves a folder that looks like a finished bundle. The swap
moves the previous bundle to ``.<name>.old`` first; a run interrupted between the two renames
leaves that folder behind, and the next run of the name puts it back (:func:`recover`).
"""
from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

#: engine files (the TensorRT stage writes them under these names)
INT8_PLAN, FP16_PLAN = "model.plan", "model.fp16.plan"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    # models
    @property
    def student(self) -> Path: return self.root / "student"
    @property
    def model_onnx(self) -> Path: return self.root / "model.onnx"
    @property
    def model_fused_onnx(self) -> Path: return self.root / "model.fused.onnx"
    @property
    def model_int8_onnx(self) -> Path: return self.root / "model.int8.onnx"
    @property
    def model_int8_trt_onnx(self) -> Path: return self.root / "model.int8.trt.onnx"
    @property
    def model_fp16_onnx(self) -> Path: return self.root / "model.fp16.onnx"
    @property
    def openvino_xml(self) -> Path: return self.root / "openvino" / "model.xml"
    @property
    def model_plan(self) -> Path: return self.root / INT8_PLAN
    @property
    def model_fp16_plan(self) -> Path: return self.root / FP16_PLAN
    @property
    def engine_json(self) -> Path: return self.root / "engine.json"
    @property
    def engine_fp16_json(self) -> Path: return self.root / "engine.fp16.json"
    @property
    def timing_cache(self) -> Path: return self.root / "timing.cache"

    # what inference needs besides the model
    def preprocessor(self, modality) -> Path:
        """The preprocessor folder (``tokenizer/`` for text)."""
        return self.root / modality.preprocessor_dir
    @property
    def config(self) -> Path: return self.root / "config.json"
    @property
    def bundle_json(self) -> Path: return self.root / "bundle.json"

    # how it was made and how good it is
    @property
    def quantization_json(self) -> Path: return self.root / "quantization.json"
    @property
    def analysis_json(self) -> Path: return self.root / "analysis.json"
    @property
    def plots(self) -> Path: return self.root / "plots"
    @property
    def sensitivity_plot(self) -> Path: return self.plots / "sensitivity.png"
    @property
    def report_json(self) -> Path: return self.root / "report.json"
    @property
    def report_md(self) -> Path: return self.root / "report.md"
    @property
    def recipe(self) -> Path: return self.root / "recipe.toml"
    @property
    def manifest(self) -> Path: return self.root / "manifest.json"


def staging_dir(out_dir: Path, name: str) -> Path:
    """A new staging folder name, unique to this run."""
    return out_dir / f".{name}.partial-{os.getpid()}-{secrets.token_hex(4)}"


def recover(out_dir: Path, name: str) -> list[str]:
    """Under the bundle's lock: undo what an interrupted run left (its staging folders; a previous
    bundle parked as ``.<name>.old`` by an interrupted swap goes back in place when ``<name>`` is
    missing, else is removed). Returns what was done, for the log."""
    done = []
    final, old = out_dir / name, out_dir / f".{name}.old"
    if old.is_dir():
        if final.exists():
            shutil.rmtree(old)
            done.append(f"removed {old.name}")
        else:
            os.replace(old, final)
            done.append(f"restored {name} from {old.name}")
    for stale in out_dir.glob(f".{name}.partial*"):
        shutil.rmtree(stale, ignore_errors=True)
        done.append(f"removed {stale.name}")
    return done


def distill_dir(out_dir: Path, name: str) -> Path:
    """Where ``modelpress distill`` trains a recipe's student (checkpoints, the student folder)."""
    return out_dir / f"{name}.distill"


def publish(staging: Path, final: Path) -> None:
    """Move a completed staging folder into place, replacing an older run of the same name."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)
