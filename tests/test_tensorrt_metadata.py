"""engine.json round trip and the load-time refusal of plans built for another TensorRT or GPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from modelpress.errors import BadInputError
from modelpress.runtimes.tensorrt.gpu import GpuIdentity
from modelpress.runtimes.tensorrt.metadata import (
    EngineMetadata,
    check_engine_compatible,
    engine_metadata_path,
    file_sha256,
    load_engine_metadata,
    write_engine_metadata,
)

H100 = GpuIdentity(name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Path, EngineMetadata]:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not really a plan, but hashed like one")
    meta = EngineMetadata(
        plan=plan.name,
        plan_sha256=file_sha256(plan),
        source_onnx="model.int8.onnx",
        precision="int8",
        tensorrt_version="10.13.0",
        gpu_name=H100.name,
        compute_capability=H100.sm,
        inputs=("input_ids", "attention_mask"),
        outputs=("last_hidden_state",),
        profiles=(
            {
                "input_ids": {"min": [1, 1], "opt": [8, 128], "max": [32, 512]},
                "attention_mask": {"min": [1, 1], "opt": [8, 128], "max": [32, 512]},
            },
        ),
        workspace_mb=4096,
        builder_optimization_level=None,
        timing_cache=None,
        build_seconds=12.5,
        built_at="2025-01-01T00:00:00+00:00",
    )
    write_engine_metadata(meta, engine_metadata_path(plan))
    return plan, meta


def test_metadata_path_names():
    assert engine_metadata_path(Path("run/model.plan")) == Path("run/engine.json")
    assert engine_metadata_path(Path("run/model.fp16.plan")) == Path("run/engine.fp16.json")
    assert engine_metadata_path(Path("run/other.plan")) == Path("run/other.engine.json")


def test_round_trip(built):
    plan, meta = built
    loaded = load_engine_metadata(plan.parent / "engine.json")
    assert loaded == meta
    assert loaded.profile_range("input_ids") == "[1, 1]..[32, 512]"
    assert not list(plan.parent.glob("*.tmp"))  # written atomically


def test_same_machine_is_accepted(built):
    plan, meta = built
    check_engine_compatible(meta, plan_path=plan, tensorrt_version="10.13.0", gpu=H100)


@pytest.mark.parametrize(
    ("trt_version", "gpu", "says"),
    [
        ("10.14.1", H100, r"TensorRT 10\.13\.0 \(this machine has 10\.14\.1\)"),
        ("10.13.0", GpuIdentity("NVIDIA A100-SXM4-80GB", (8, 0)), r"compute capability 9\.0 \(this GPU is 8\.0\)"),
        (
            "10.13.0",
            GpuIdentity("NVIDIA H100 PCIe", (9, 0)),
            r"GPU 'NVIDIA H100 80GB HBM3' \(this machine has 'NVIDIA H100 PCIe'\)",
        ),
    ],
)
def test_other_tensorrt_or_gpu_is_refused_with_what_differs(built, trt_version, gpu, says):
    plan, meta = built
    with pytest.raises(BadInputError, match=says) as info:
        check_engine_compatible(meta, plan_path=plan, tensorrt_version=trt_version, gpu=gpu)
    assert str(plan) in str(info.value) and "modelpress engine" in str(info.value)


def test_rebuilt_plan_with_stale_metadata_is_refused(built):
    plan, meta = built
    plan.write_bytes(b"a different build")
    with pytest.raises(BadInputError, match="sha256 differs"):
        check_engine_compatible(meta, plan_path=plan, tensorrt_version="10.13.0", gpu=H100)


def test_missing_malformed_and_old_metadata(tmp_path: Path, built):
    with pytest.raises(BadInputError, match="no engine metadata"):
        load_engine_metadata(tmp_path / "nothing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BadInputError, match="bad.json: unreadable"):
        load_engine_metadata(bad)
    _, meta = built
    old = tmp_path / "old.json"
    old.write_text(json.dumps(dataclasses.replace(meta, format_version=0).to_dict()))
    with pytest.raises(BadInputError, match="format 0"):
        load_engine_metadata(old)
    partial = tmp_path / "partial.json"
    data = meta.to_dict()
    del data["gpu_name"]
    partial.write_text(json.dumps(data))
    with pytest.raises(BadInputError, match="lacks gpu_name"):
        load_engine_metadata(partial)
