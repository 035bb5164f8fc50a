"""Targets (issue 23, part 1): a named CPU level or this machine; the plan's CPU-dependent choices
follow the target, not the build machine."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelpress.errors import BadInputError
from modelpress.runtimes import cpu, target as T


@pytest.fixture
def fake_cpu(monkeypatch):
    """Pretend to be an x86 CPU with the given flags (the detection is cached: cleared around)."""

    def set_flags(flags, machine="x86_64"):
        monkeypatch.setattr(T, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(T.platform, "machine", lambda: machine)
        monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
        T.host_target.cache_clear()

    yield set_flags
    T.host_target.cache_clear()


ZEN2 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "sse4_2"}
SKYLAKE_SP = ZEN2 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
ZEN4 = SKYLAKE_SP | {"avx512_vnni", "avx512_bf16"}
SAPPHIRE = ZEN4 | {"amx_int8", "amx_bf16", "amx_tile"}


@pytest.mark.parametrize(
    "flags, name, saturates, bf16",
    [
        (ZEN2, "x86-64-v3", True, False),
        (ZEN2 | {"avx_vnni"}, "x86-64-v3+avx-vnni", False, False),
        (SKYLAKE_SP, "x86-64-v4", True, False),
        (ZEN4, "avx512-vnni", False, True),
        (SAPPHIRE, "amx", False, True),
    ],
)
def test_auto_names_the_highest_level_this_cpu_satisfies(fake_cpu, flags, name, saturates, bf16):
    fake_cpu(flags)
    t = T.resolve_target("auto")
    assert (t.name, t.int8_gemm_saturates, t.has_bf16, t.detected) == (name, saturates, bf16, True)
    assert T.missing_flags(t) == []
    assert T.LEVELS[name].flags <= t.flags
    assert T.Target.from_dict(t.describe()) == T.Target(t.name, t.flags, t.arch, True, t.microarchitecture, t.cpu)


def test_arm_targets_never_saturate(fake_cpu):
    fake_cpu({"asimd", "asimddp", "fp"}, machine="aarch64")
    t = T.resolve_target("auto")
    assert t.name == "arm64" and not t.int8_gemm_saturates and T.missing_flags(t) == []
    assert T.missing_flags(T.resolve_target("avx512-vnni")) == ["arch x86_64 (this machine is aarch64)"]


def test_a_named_target_guarantees_only_its_level(fake_cpu):
    fake_cpu(ZEN2)
    vnni = T.resolve_target("avx512-vnni")
    assert not vnni.detected and not vnni.int8_gemm_saturates
    assert T.missing_flags(vnni) == ["avx512_vnni", "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl"]
    assert T.missing_flags(T.resolve_target("x86-64-v3")) == []
    with pytest.raises(BadInputError, match=r"^target: expected one of auto, x86-64-v3, .*got 'avx9'$"):
        T.resolve_target("avx9")


def _one_matmul(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(w, "W")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path, rng.normal(size=(32, 16)).astype(np.float32)


@pytest.mark.parametrize("build_flags", [ZEN2, ZEN4], ids=["built-on-avx2", "built-on-vnni"])
@pytest.mark.parametrize(
    "target, qmax", [("x86-64-v3", 63), ("x86-64-v4", 63), ("avx512-vnni", 127), ("amx", 127), ("arm64", 127)]
)
def test_weight_range_follows_the_target_not_the_build_machine(fake_cpu, tmp_path, build_flags, target, qmax):
    """``target = "x86-64-v3"`` gives 7-bit weights and ``"avx512-vnni"`` 8-bit on any build machine:
    the int8 weights written to the graph reach exactly ±qmax per channel."""
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import quantize_static

    fake_cpu(build_flags)
    src, x = _one_matmul(tmp_path)
    cfg = QuantizeConfig(format="qdq", smoothquant=False).for_target(T.resolve_target(target))
    summary = quantize_static(src, tmp_path / "m.int8.onnx", [{"x": x}], cfg)
    assert summary.weight_bits == (7 if qmax == 63 else 8)
    q = onnx.load(str(tmp_path / "m.int8.onnx"))
    ints = [
        numpy_helper.to_array(t) for t in q.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 2
    ]
    assert len(ints) == 1 and np.abs(ints[0].astype(int)).max(axis=0).tolist() == [qmax] * 8
    # a reduce_range the recipe wrote wins over the target
    assert QuantizeConfig(reduce_range=False).for_target(T.resolve_target("x86-64-v3")).weight_qmax == 127
    assert QuantizeConfig(preset="tensorrt").for_target(T.resolve_target("x86-64-v3")).weight_qmax == 127


def test_a_run_for_a_declared_target_records_it_and_follows_it(tiny_bert, data_files, tmp_path, capsys):
    """``modelpress run --target x86-64-v3`` on any build machine: 7-bit weights, the target in
    bundle.json and the report; the bundle opens here without a word (this CPU has AVX2)."""
    import json
    import warnings

    from conftest import FAST_CALIBRATION, FAST_VALIDATE, write_recipe

    from modelpress.bundle import load
    from modelpress.cli import main

    recipe = write_recipe(
        tmp_path / "t.toml",
        {"name": "t", "teacher": str(tiny_bert.path), "target": "avx512-vnni"},
        {
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE},
            "gate": {"max_drop": 50.0},
        },
    )
    assert main(["-q", "run", str(recipe), "--out", str(tmp_path / "out"), "--target", "x86-64-v3"]) == 0
    bundle = tmp_path / "out" / "t"
    meta = json.loads((bundle / "bundle.json").read_text())
    report = json.loads((bundle / "report.json").read_text())
    assert meta["target"]["name"] == report["target"]["name"] == "x86-64-v3"
    assert meta["target"]["int8_gemm_saturates"] and not meta["target"]["detected"]
    assert report["quantization"]["weight_bits"] == 7
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["recipe"]["target"] == "x86-64-v3" and manifest["recipe"]["quantize"]["reduce_range"] is True
    if T.missing_flags(T.resolve_target("x86-64-v3")):
        pytest.skip("this CPU lacks AVX2: the load check below would warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with load(bundle) as model:
            assert model.embed(["a text"]).shape[0] == 1


def test_load_warns_once_on_a_cpu_without_the_targets_instructions_and_strict_refuses(fake_cpu):
    from modelpress import bundle_base as B

    fake_cpu(ZEN2)
    B._WARNED_TARGETS.discard("avx512-vnni")
    meta = {"task": {"task": "feature-extraction"}, "target": T.resolve_target("avx512-vnni").describe()}
    with pytest.warns(RuntimeWarning, match=r"pressed for the avx512-vnni CPU level; this CPU lacks avx512_vnni, "):
        assert "avx512_vnni" in B.check_target(meta)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per target: the second load is quiet
        assert B.check_target(meta)
    with pytest.raises(BadInputError, match=r"\(strict=True\)$"):
        B.check_target(meta, strict=True)
    assert B.check_target({"task": {"task": "feature-extraction"}}) == []  # a bundle from before targets
    fake_cpu(ZEN4)
    assert B.check_target(meta, strict=True) == []
