"""Every artifact path of a run folder, named in one place.

A run is staged in ``<out>/.<name>.partial`` and renamed to ``<out>/<name>`` when complete, so an
interrupted run never leaves a folder that looks like a finished bundle.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

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
    def model_plan(self) -> Path: return self.root / "model.plan"
    @property
    def engine_json(self) -> Path: return self.root / "engine.json"
    @property
    def tokenizer(self) -> Path: return self.root / "tokenizer"
    @property
    def config(self) -> Path: return self.root / "config.json"
    @property
    def report_json(self) -> Path: return self.root / "report.json"
    @property
    def report_md(self) -> Path: return self.root / "report.md"
    @property
    def quantization_json(self) -> Path: return self.root / "quantization.json"
    @property
    def plots(self) -> Path: return self.root / "plots"
    @property
    def manifest(self) -> Path: return self.root / "manifest.json"
    @property
    def recipe(self) -> Path: return self.root / "recipe.toml"


def staging_dir(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}.partial"


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
