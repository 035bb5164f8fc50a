"""TensorRT engine stage, runners and fp16 conversion.

On a CPU machine (CI): every GPU path refuses with BackendUnavailableError and writes nothing, and
all modules import without tensorrt. On a machine with TensorRT and a CUDA GPU, the ``gpu`` tests
build real engines from a tiny BERT and compare them with ONNX Runtime on the CPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelpress.errors import BackendUnavailableError, BadInputError
from modelpress.runtimes.tensorrt.config import EngineConfig
from modelpress.runtimes.tensorrt.engine import build_engine
from modelpress.runtimes.tensorrt.fp16 import convert_to_fp16
from modelpress.runtimes.tensorrt.gpu import gpu_identity
from modelpress.runtimes.tensorrt.metadata import EngineMetadata, write_engine_metadata
from modelpress.runtimes.onnxruntime_gpu_runner import PROVIDERS, OrtGpuRunner
from modelpress.runtimes.tensorrt.runner import TensorRTRunner
from modelpress.runtimes.tensorrt.stage import build_engines


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


HAS_TRT = _importable("tensorrt")
HAS_GPU = _has_cuda() or shutil.which("nvidia-smi") is not None
no_trt = pytest.mark.skipif(HAS_TRT and HAS_GPU, reason="TensorRT and a GPU are present: refusal path not reachable")
_TRT_GPU_MARKS = (
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not installed"),
    pytest.mark.skipif(not _has_cuda(), reason="no CUDA GPU visible to PyTorch"),
)


def needs_trt_gpu(test):
    """Skip (with the reason) unless tensorrt is importable and PyTorch sees a CUDA GPU."""
    for mark in _TRT_GPU_MARKS:
        test = mark(test)
    return test


def _tiny_fp32(path: Path) -> Path:
    """input_ids -> Gather(embedding) -> LayerNorm -> MatMul, the op mix of a text encoder."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "emb"),
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h"], name="embed"),
        helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "W"], ["y"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


# --- CPU machine: refusals, no writes, lazy imports ------------------------------------------


def test_every_module_imports_without_gpu_stack():
    # only what these modules themselves pull in is judged (the packages they sit in may change); onnxruntime is
    # a core dependency (the slim install has it), which the ORT GPU runner imports at its top
    code = (
        "import sys, modelpress.errors, runtimes.base, bench; before = set(sys.modules); "
        "import runtimes.tensorrt.checker, runtimes.tensorrt.config, runtimes.tensorrt.engine, "
        "runtimes.tensorrt.fp16, runtimes.tensorrt.gpu, runtimes.tensorrt.metadata, "
        "runtimes.onnxruntime_gpu_runner, runtimes.tensorrt.runner, runtimes.tensorrt.stage, bench.gpu_check; "
        "heavy = [m for m in ('tensorrt', 'torch') if m in set(sys.modules) - before]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@no_trt
def test_build_engine_refuses_without_tensorrt_and_writes_nothing(tmp_path: Path):
    src = _tiny_fp32(tmp_path / "model.onnx")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BackendUnavailableError):
        build_engine(src, tmp_path / "model.plan", EngineConfig(), precision="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@no_trt
def test_stage_refuses_without_tensorrt_before_writing(tmp_path: Path):
    _tiny_fp32(tmp_path / "model.onnx")
    with pytest.raises(BackendUnavailableError, match="ONNX artifacts are unaffected|GPU"):
        build_engines(tmp_path, EngineConfig(precision="fp16"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no model.fp16.onnx


def test_stage_names_the_missing_input(tmp_path: Path):
    with pytest.raises(BadInputError, match=r"model\.int8\.onnx: missing; run `modelpress quantize`"):
        build_engines(tmp_path, EngineConfig())
    with pytest.raises(BadInputError, match=r"model\.onnx: missing; run `modelpress export`"):
        build_engines(tmp_path, EngineConfig(precision="fp16"))


def test_stage_checks_qdq_rules_before_needing_tensorrt(tmp_path: Path):
    # a uint8 Q/DQ pair: refused as bad input on any machine, GPU or not
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "zp")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="x_DQ"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(tmp_path / "model.int8.onnx"))
    with pytest.raises(BadInputError, match="x_Q: int8"):
        build_engines(tmp_path, EngineConfig())


def test_build_engine_refuses_inputs_it_cannot_profile(tmp_path: Path):
    src = _tiny_fp32(tmp_path / "model.onnx")
    with pytest.raises(BadInputError, match="input 'pixel_values' is not one of"):
        build_engine(src, tmp_path / "model.plan", EngineConfig(), input_names=["pixel_values"])


@no_trt
def test_tensorrt_runner_refuses_without_tensorrt(tmp_path: Path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    meta = EngineMetadata(
        plan="model.plan",
        plan_sha256="0" * 64,
        source_onnx="model.int8.onnx",
        precision="int8",
        tensorrt_version="10.13.0",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        inputs=("input_ids", "attention_mask"),
        outputs=("last_hidden_state",),
        profiles=(),
        workspace_mb=4096,
        builder_optimization_level=None,
        timing_cache=None,
        build_seconds=1.0,
        built_at="2025-01-01T00:00:00+00:00",
    )
    write_engine_metadata(meta, tmp_path / "engine.json")
    runner = TensorRTRunner(plan)
    assert runner.input_names == ("input_ids", "attention_mask")  # from engine.json, no GPU needed
    with pytest.raises(BackendUnavailableError):
        with runner:
            pass


def test_tensorrt_runner_names_a_missing_plan(tmp_path: Path):
    with pytest.raises(BadInputError, match="no such TensorRT plan"):
        with TensorRTRunner(tmp_path / "model.plan"):
            pass


@pytest.mark.parametrize(
    "provider",
    [
        pytest.param(
            p, marks=pytest.mark.skipif(PROVIDERS[p] in _ort_providers(), reason=f"{PROVIDERS[p]} is available here")
        )
        for p in ("cuda", "tensorrt")
    ],
)
def test_ort_gpu_runner_refuses_a_missing_provider(tmp_path: Path, provider: str):
    src = _tiny_fp32(tmp_path / "model.onnx")
    with pytest.raises(BackendUnavailableError, match=f"{PROVIDERS[provider]}.*onnxruntime-gpu"):
        with OrtGpuRunner(src, provider=provider):
            pass


def test_ort_gpu_runner_rejects_unknown_provider(tmp_path: Path):
    with pytest.raises(BadInputError, match="provider 'rocm'"):
        OrtGpuRunner(tmp_path / "m.onnx", provider="rocm")


@pytest.mark.skipif(HAS_GPU, reason="a GPU is visible here")
def test_gpu_identity_refuses_without_gpu():
    with pytest.raises(BackendUnavailableError, match="no NVIDIA GPU"):
        gpu_identity()


def test_fp16_conversion_keeps_io_types_and_layernorm_fp32(tmp_path: Path):
    import onnxruntime as ort

    src = _tiny_fp32(tmp_path / "model.onnx")
    dst = convert_to_fp16(src, tmp_path / "model.fp16.onnx")
    model = onnx.load(str(dst))
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    w = next(t for t in model.graph.initializer if t.name == "W")
    assert w.data_type == TensorProto.FLOAT16
    assert any(n.op_type == "Cast" for n in model.graph.node)  # around the fp32 LayerNormalization
    feed = {"input_ids": np.array([[1, 2, 3], [4, 5, 6]], np.int64)}
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-2, rtol=2e-2)
    assert not list(tmp_path.glob("*.tmp"))


def test_fp16_conversion_names_missing_source(tmp_path: Path):
    with pytest.raises(BadInputError, match="run `modelpress export` first"):
        convert_to_fp16(tmp_path / "model.onnx", tmp_path / "model.fp16.onnx")


# --- GPU machine: real engines ---------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_run_dir(tmp_path_factory) -> Path:
    """A run folder with a tiny BERT's model.onnx and its TensorRT-style model.int8.onnx."""
    import torch
    import transformers
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    run_dir = tmp_path_factory.mktemp("run")
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids)),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
    ).save(str(run_dir / "model.onnx"))
    rng = np.random.default_rng(0)
    batches = iter(
        [
            {"input_ids": rng.integers(0, 64, (2, 8)).astype(np.int64), "attention_mask": np.ones((2, 8), np.int64)}
            for _ in range(4)
        ]
    )

    class Reader:
        def get_next(self):
            return next(batches, None)

    quantize_static(
        str(run_dir / "model.onnx"),
        str(run_dir / "model.int8.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    return run_dir


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@needs_trt_gpu
def test_engines_build_run_and_match_onnxruntime(bert_run_dir: Path):
    import onnxruntime as ort

    cfg = EngineConfig(precision="both", opt_batch=2, max_batch=4, opt_seq=16, max_seq=32, workspace_mb=1024)
    built = build_engines(bert_run_dir, cfg)
    assert [m["precision"] for m in built] == ["int8", "fp16"]
    assert (bert_run_dir / "timing.cache").stat().st_size > 0
    meta = json.loads((bert_run_dir / "engine.json").read_text())
    assert meta["plan"] == "model.plan" and meta["inputs"] == ["input_ids", "attention_mask"]
    feed = {
        "input_ids": np.random.default_rng(1).integers(0, 64, (3, 12)).astype(np.int64),
        "attention_mask": np.ones((3, 12), np.int64),
        "token_type_ids": np.zeros((3, 12), np.int64),
    }
    for plan, source in (("model.plan", "model.int8.onnx"), ("model.fp16.plan", "model.onnx")):
        ref = ort.InferenceSession(str(bert_run_dir / source), providers=["CPUExecutionProvider"])
        expected = ref.run(["last_hidden_state"], {k: feed[k] for k in ("input_ids", "attention_mask")})[0]
        with TensorRTRunner(bert_run_dir / plan) as runner:
            got = runner.run(feed)["last_hidden_state"]  # extra token_type_ids is ignored
        assert got.shape == expected.shape
        assert _cosine(got, expected) > 0.99, plan


@needs_trt_gpu
def test_engine_from_another_gpu_is_refused_at_load(bert_run_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(bert_run_dir, run)
    if not (run / "model.plan").is_file():
        build_engines(run, EngineConfig(opt_batch=2, max_batch=4, opt_seq=16, max_seq=32, workspace_mb=1024))
    data = json.loads((run / "engine.json").read_text())
    data["gpu_name"], data["compute_capability"] = "Some Other GPU", "1.0"
    (run / "engine.json").write_text(json.dumps(data))
    with pytest.raises(BadInputError, match="engine was built for compute capability 1.0"):
        with TensorRTRunner(run / "model.plan"):
            pass
    out_of_profile = {"input_ids": np.zeros((8, 8), np.int64), "attention_mask": np.ones((8, 8), np.int64)}
    data["gpu_name"], data["compute_capability"] = gpu_identity().name, gpu_identity().sm
    (run / "engine.json").write_text(json.dumps(data))
    with TensorRTRunner(run / "model.plan") as runner:
        with pytest.raises(BadInputError, match="outside the engine's profile"):
            runner.run(out_of_profile)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "provider",
    [
        pytest.param(
            p,
            marks=pytest.mark.skipif(
                PROVIDERS[p] not in _ort_providers(), reason=f"{PROVIDERS[p]} is not available (needs onnxruntime-gpu)"
            ),
        )
        for p in ("cuda", "tensorrt")
    ],
)
def test_ort_gpu_runner_matches_cpu(bert_run_dir: Path, provider: str):
    import onnxruntime as ort

    source = bert_run_dir / ("model.int8.onnx" if provider == "tensorrt" else "model.onnx")
    feed = {"input_ids": np.arange(16, dtype=np.int64).reshape(2, 8), "attention_mask": np.ones((2, 8), np.int64)}
    expected = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(["last_hidden_state"], feed)[0]
    cfg = dataclasses.replace(EngineConfig(), opt_batch=2, max_batch=4, opt_seq=8, max_seq=32)
    with OrtGpuRunner(source, provider=provider, cfg=cfg) as runner:
        got = runner.run(feed)["last_hidden_state"]
    assert _cosine(got, expected) > 0.99
