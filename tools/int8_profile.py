"""Where an int8 encoder's forward spends its time, per op, against its projection GEMMs alone.

Issue #23 item 5's measurement: ONNX Runtime's profiler on the int8 ONNX graph (time per op type, the
fusions ORT applied at load time from ``session.optimized_model_filepath``) and OpenVINO's
``PERF_COUNT`` on an IR, at one shape (default b32×128). The headline is the whole forward ÷ its
projection GEMMs: for ONNX Runtime a graph of the same int8 GEMMs alone (every ``MatMulIntegerToFloat``
and ``QAttention``'s packed Q/K/V GEMM, the model's own weights and shapes), timed interleaved with the
model in this one process; for OpenVINO the sum of the ``FullyConnected`` nodes' times over the total.
Ratios from one interleaved process hold under contention; absolute times need a quiet machine.

    python tools/int8_profile.py artifacts/<name>/model.int8.onnx [--ir artifacts/<name>/openvino/model.xml]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from modelpress.runtimes.onnxruntime_runner import session_options

MS = "com.microsoft"


def feeds(model_inputs, batch: int, length: int, vocab: int = 1000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name in model_inputs:
        if name == "input_ids":
            out[name] = rng.integers(100, vocab, (batch, length), dtype=np.int64)
        elif name == "attention_mask":
            out[name] = np.ones((batch, length), dtype=np.int64)
        else:
            out[name] = np.zeros((batch, length), dtype=np.int64)
    return out


def gemm_only(model: onnx.ModelProto, rows: int) -> onnx.ModelProto:
    """The model's int8 projection GEMMs alone: each ``MatMulIntegerToFloat`` (bias included) and each
    ``QAttention``'s packed weight as one, on a constant-free uint8 input of ``rows`` rows per width."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes, new_inits, inputs, outputs = [], [], {}, []
    for node in model.graph.node:
        if node.op_type == "MatMulIntegerToFloat":
            w, ws, wzp = node.input[1], node.input[3], node.input[5]
            bias = node.input[6] if len(node.input) > 6 else ""
            xs, xzp = node.input[2], node.input[4]
        elif node.op_type == "QAttention":
            w, bias, xs, ws, xzp, wzp = (
                node.input[1],
                node.input[2],
                node.input[3],
                node.input[4],
                node.input[6],
                node.input[7],
            )
        else:
            continue
        k = inits[w].dims[0]
        x = f"x{k}"
        inputs.setdefault(x, helper.make_tensor_value_info(x, TensorProto.UINT8, [rows, k]))
        for name in (w, ws, wzp, xs, xzp, bias):
            if name and name not in {i.name for i in new_inits}:
                new_inits.append(inits[name])
        out = f"{node.name}_out"
        args = [x, w, xs, ws, xzp, wzp] + ([bias] if bias else [])
        nodes.append(helper.make_node("MatMulIntegerToFloat", args, [out], name=node.name, domain=MS))
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "gemms", list(inputs.values()), outputs, new_inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


def ort_profile(path: Path, feed, threads: int, runs: int) -> tuple[dict[str, float], float, Counter]:
    """(ms per op type per forward, ms per forward, op types of ORT's optimized graph)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "prof")
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        sess.run(None, feed)
        sess.run(None, feed)
        t0 = time.perf_counter()
        for _ in range(runs):
            sess.run(None, feed)
        wall = (time.perf_counter() - t0) / runs * 1e3
        events = json.loads(Path(sess.end_profiling()).read_text())
        optimized = Counter(n.op_type for n in onnx.load(os.path.join(tmp, "optimized.onnx")).graph.node)
    runs_seen = [e for e in events if e.get("name") == "model_run"]
    start = runs_seen[2]["ts"] if len(runs_seen) > 2 else 0  # skip the two warm-ups
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    return dict(per_op), wall, optimized


def interleaved_ratio(path: Path, feed, threads: int, rounds: int, rows: int) -> tuple[float, float, float]:
    """(model ms, GEMMs-alone ms, ratio) — medians over interleaved rounds in this process."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    gm = gemm_only(model, rows)
    gfeed = {
        i.name: np.random.default_rng(1).integers(
            0, 255, (rows, i.type.tensor_type.shape.dim[1].dim_value), dtype=np.uint8
        )
        for i in gm.graph.input
    }
    a = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(gm.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])
    ta, tb = [], []
    for r in range(rounds + 1):
        for sess, f, t in ((a, feed, ta), (b, gfeed, tb)):
            t0 = time.perf_counter()
            sess.run(None, f)
            if r:
                t.append(time.perf_counter() - t0)
    ma, mb = 1e3 * float(np.median(ta)), 1e3 * float(np.median(tb))
    return ma, mb, ma / mb


def ov_profile(xml: Path, feed, threads: int, runs: int) -> tuple[dict[str, float], float]:
    """(ms per (layer type, exec type) per forward, total) from OpenVINO's PERF_COUNT."""
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(xml),
        "CPU",
        {
            "PERF_COUNT": "YES",
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )
    req = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.inputs]
    f = {n: feed[n] for n in names}
    req.infer(f)
    per: dict[str, float] = defaultdict(float)
    for _ in range(runs):
        req.infer(f)
        for info in req.get_profiling_info():
            per[f"{info.node_type}/{info.exec_type}"] += info.real_time.total_seconds() * 1e3 / runs
    return dict(per), sum(per.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--ir", type=Path)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    inputs = [i.name for i in onnx.load(str(args.onnx), load_external_data=False).graph.input]
    feed = feeds(inputs, args.batch, args.length)
    per_op, wall, optimized = ort_profile(args.onnx, feed, args.threads, args.runs)
    total = sum(per_op.values())
    print(f"ONNX Runtime {args.onnx} b{args.batch}x{args.length}: {wall:.1f} ms/forward, ops {total:.1f} ms")
    for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1]):
        print(f"  {op:28s} {ms:8.2f} ms {100 * ms / total:5.1f} %")
    print("  optimized graph:", dict(optimized.most_common()))
    m, g, r = interleaved_ratio(args.onnx, feed, args.threads, args.rounds, args.batch * args.length)
    print(f"  forward {m:.1f} ms / projection GEMMs alone {g:.1f} ms = {r:.3f}x (interleaved medians)")
    if args.ir:
        per, total = ov_profile(args.ir, feed, args.threads, args.runs)
        fc = sum(ms for k, ms in per.items() if k.startswith("FullyConnected"))
        print(
            f"OpenVINO {args.ir}: {total:.1f} ms/forward (PERF_COUNT sum); "
            f"FullyConnected {fc:.1f} ms -> {total / fc:.3f}x"
        )
        for k, ms in sorted(per.items(), key=lambda kv: -kv[1])[:16]:
            print(f"  {k:40s} {ms:8.2f} ms {100 * ms / total:5.1f} %")


if __name__ == "__main__":
    main()
