"""`python -m bench.lm_decode_bench`: our fused decoder graph against onnxruntime-genai's builder on
the same weights (issue #24 item 4), int4, one interleaved process.

The model is ``bench.lm_scale_bench``'s random Qwen2.5-0.5B-shaped decoder (``--model``: its
folder). Ours: the fused graph (``export.fused_decoder``, parity-checked against PyTorch), then
weight-only int4 (``MatMulNBits``, block 32, accuracy level 4, symmetric: the builder's ``-p int4``
settings), run by our generator (``modelpress.generation.TextGenerator``: right-padded, the KV cache
updated in place through IO binding). Theirs: ``python -m onnxruntime_genai.models.builder -m <model>
-o <out> -p int4 -e cpu``, run by ``onnxruntime_genai`` (its session at the same thread count).

Each round times, for each in turn, a prefill of ``--prompt`` tokens (to the first new token) and
``--new`` decode steps (each: the model on one token, the greedy pick, the loop), batch 1;
the figures are medians over ``--rounds`` rounds. A machine shared with other jobs slows both
alike within a round: the ratio is what to read. Then one decode step of ours is profiled with
ONNX Runtime's profiler (``--profile``): time per operator type, from the profile of
``--new`` decode steps after a prefill. Results: ``bench/results/lm_decode.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine, with_huge_pages

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results/lm_decode.json"


def ours_int4(model_dir: Path, work: Path, block: int = 32) -> Path:
    """The fused graph of ``model_dir``, int4 weight-only with ``block`` input rows per scale (reused when
    already written: remove ``work`` after changing the graph)."""
    out = work / "ours" / f"model.int4.b{block}.onnx"
    if out.is_file():
        return out
    import transformers

    from modelpress.export.fused_decoder import export_fused_decoder
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.weight_only import quantize_weights_only

    fp32 = work / "ours" / "model.onnx"
    fp32.parent.mkdir(parents=True, exist_ok=True)
    if not fp32.is_file():
        model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
        start = time.perf_counter()
        export_fused_decoder(model, None, fp32)
        print(f"fused export: {time.perf_counter() - start:.1f} s", flush=True)
        del model
    # round to nearest, as the builder's `-p int4`: the integers (not the kernel) are what GPTQ/AWQ change,
    # and random weights have no calibration set worth the name
    cfg = QuantizeConfig(
        mode="weight-only", weight_bits=4, block_size=block, head_bits=4, accuracy_level=4, int4_method="rtn"
    )  # every weight int4, as the builder's `-p int4` writes it
    start = time.perf_counter()
    quantize_weights_only(fp32, out, cfg)
    print(f"int4: {time.perf_counter() - start:.1f} s", flush=True)
    return out


def theirs_int4(model_dir: Path, work: Path, threads: int, block: int = 32) -> Path:
    """onnxruntime-genai's builder int4 of ``model_dir`` (reused when already built); block 32 is its
    default for the CPU, another through its ``block_size`` extra option."""
    out = work / ("genai" if block == 32 else f"genai-b{block}")
    if not (out / "genai_config.json").is_file():
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(model_dir), "-o", str(out)]
        extra = [] if block == 32 else ["--extra_options", f"block_size={block}"]
        subprocess.run([*cmd, "-p", "int4", "-e", "cpu", *extra], check=True)
    config = json.loads((out / "genai_config.json").read_text())
    options = config["model"]["decoder"]["session_options"]
    options["intra_op_num_threads"], options["inter_op_num_threads"] = threads, 1
    (out / "genai_config.json").write_text(json.dumps(config, indent=4))
    return out


class _Ours:
    def __init__(self, path: Path, threads: int) -> None:
        from modelpress.generation import TextGenerator
        from modelpress.kv_cache import KVLayout
        from modelpress.runtimes.registry import create_runner

        # as load() opens a text-generation bundle: its threads spin between the decode loop's runs
        self.runner = create_runner("onnxruntime", path, threads=threads, spin=True).__enter__()
        layout = KVLayout.from_graph(self.runner._session.get_inputs())
        self.generator = TextGenerator(self.runner, _NoStop(), layout=layout)

    def round(self, prompt: list[int], new: int) -> tuple[float, float, list[int]]:
        steps = self.generator.steps([prompt], max_new_tokens=new + 1, stop_token_ids=[])
        start = time.perf_counter()
        tokens = [int(next(steps)[0])]
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        tokens += [int(t[0]) for t in steps]
        return prefill, time.perf_counter() - start, tokens


class _Theirs:
    def __init__(self, folder: Path) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(folder))

    def round(self, prompt: list[int], new: int) -> tuple[float, float, list[int]]:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + new + 1, do_sample=False)
        generator = self.og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens(np.array([prompt], np.int32))
        generator.generate_next_token()
        prefill = time.perf_counter() - start
        tokens = [int(generator.get_next_tokens()[0])]
        start = time.perf_counter()
        for _ in range(new):
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        return prefill, time.perf_counter() - start, tokens


class _NoStop:
    eos_token_id = None
    pad_token_id = 0


def profile_decode(path: Path, threads: int, prompt: list[int], new: int, work: Path) -> dict:
    """ONNX Runtime's profile of ``new`` decode steps (in place) after a prefill: ms per step by
    operator type, and each type's share."""
    import onnxruntime as ort

    from modelpress.kv_cache import KVLayout
    from modelpress.runtimes.onnxruntime_runner import InPlaceCache, session_options

    opts = session_options(threads, spin=True)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(work / "decode_profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    cache = InPlaceCache(session, KVLayout.from_graph(session.get_inputs()), 1, len(prompt) + new + 1)
    logits = cache.run(np.array([prompt]), np.ones((1, len(prompt)), np.int64))
    length = len(prompt)
    for _ in range(new):
        length += 1
        token = logits[:, -1].argmax(-1)[:, None]
        logits = cache.run(token, np.ones((1, length), np.int64))
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    decode_runs = runs[1:]  # the first is the prefill
    start_us = min(e["ts"] for e in decode_runs)
    by_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("ts", 0) >= start_us and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1e3
    total = sum(by_op.values())
    step_ms = statistics.median(e["dur"] / 1e3 for e in decode_runs)
    return {
        "decode_steps": len(decode_runs),
        "step_ms_median": round(step_ms, 2),
        "kernel_ms_per_step": round(total / len(decode_runs), 2),
        "by_op": {
            op: {"ms_per_step": round(ms / len(decode_runs), 3), "share": round(ms / total, 4)}
            for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])
        },
    }


def _size_mb(folder: Path, names: list[str]) -> float:
    return round(sum((folder / n).stat().st_size for n in names if (folder / n).is_file()) / 2**20, 1)


NOTE_CONTENDED = "Measured on a machine shared with other jobs: read the ratios, not the absolute figures."
NOTE_QUIET = "Measured with nothing else running; the rounds alternate between the two in one process."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("/tmp/modelpress-lm-scale/0.5b/model"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/modelpress-lm-decode"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--contended", action="store_true", help="say in the results that other jobs shared the CPU")
    ap.add_argument(
        "--blocks", type=int, nargs="+", default=[32, 128], help="int4 block sizes, each ours beside the builder's"
    )
    ap.add_argument("--small-pages", action="store_true", help="without huge pages (bench.with_huge_pages)")
    args = ap.parse_args(argv)
    if not args.small_pages:
        with_huge_pages("bench.lm_decode_bench", argv)
    args.work.mkdir(parents=True, exist_ok=True)
    ours_path = {b: ours_int4(args.model, args.work, b) for b in args.blocks}
    theirs_path = {b: theirs_int4(args.model, args.work, args.threads, b) for b in args.blocks}
    rng = np.random.default_rng(0)
    vocab = json.loads((args.model / "config.json").read_text())["vocab_size"]
    prompt = rng.integers(0, vocab, args.prompt).tolist()
    contenders: dict[str, Any] = {}
    for b in args.blocks:
        contenders[_row(OURS, b)] = _Ours(ours_path[b], args.threads)
        contenders[_row(THEIRS, b)] = _Theirs(theirs_path[b])
    times: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in contenders}
    tokens = {}
    for name, c in contenders.items():  # warm-up
        c.round(prompt, 4)
    for r in range(args.rounds):
        for name, c in contenders.items():
            prefill, decode, made = c.round(prompt, args.new)
            times[name]["prefill"].append(prefill)
            times[name]["decode"].append(decode)
            tokens[name] = made
        print(f"round {r + 1}: " + ", ".join(f"{k} {v['decode'][-1]:.2f}s" for k, v in times.items()), flush=True)
    rows = {
        name: {
            "prefill_ms": round(1e3 * statistics.median(t["prefill"]), 1),
            "decode_tokens_per_s": round(args.new / statistics.median(t["decode"]), 2),
        }
        for name, t in times.items()
    }
    default = args.blocks[0]
    ours, theirs = rows[_row(OURS, default)], rows[_row(THEIRS, default)]
    files, nodes = {}, {}
    for b in args.blocks:
        files[_row(OURS, b)] = _size_mb(ours_path[b].parent, [ours_path[b].name, ours_path[b].name + ".data"])
        files[_row(THEIRS, b)] = _size_mb(theirs_path[b], ["model.onnx", "model.onnx.data"])
        nodes[_row(OURS, b)], nodes[_row(THEIRS, b)] = _nodes(ours_path[b]), _nodes(theirs_path[b] / "model.onnx")
    result = {
        "machine": machine(),
        "note": NOTE_CONTENDED if args.contended else NOTE_QUIET,
        "model": json.loads((args.model / "bench_model.json").read_text()),
        "settings": {
            "threads": args.threads,
            "prompt": args.prompt,
            "new": args.new,
            "rounds": args.rounds,
            "batch": 1,
            "blocks": args.blocks,
        },
        "rows": rows,
        # the first block size's pair (32: the builder's default for the CPU) is the headline
        "decode_ratio": round(ours["decode_tokens_per_s"] / theirs["decode_tokens_per_s"], 3),
        "prefill_ratio": round(ours["prefill_ms"] / theirs["prefill_ms"], 3),
        "by_block": {
            str(b): {
                "decode_ratio": round(
                    rows[_row(OURS, b)]["decode_tokens_per_s"] / rows[_row(THEIRS, b)]["decode_tokens_per_s"], 3
                ),
                "prefill_ratio": round(rows[_row(OURS, b)]["prefill_ms"] / rows[_row(THEIRS, b)]["prefill_ms"], 3),
                "greedy_tokens_equal": tokens[_row(OURS, b)] == tokens[_row(THEIRS, b)],
            }
            for b in args.blocks
        },
        "greedy_tokens_equal": tokens[_row(OURS, default)] == tokens[_row(THEIRS, default)],
        "files_mb": files,
        "nodes": nodes,
        "profile": profile_decode(ours_path[default], args.threads, prompt, args.new, args.work),
    }
    print(json.dumps(result, indent=1))
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    return 0


OURS, THEIRS = "modelpress fused int4", "onnxruntime-genai builder int4"


def _row(name: str, block: int) -> str:
    """A row's name: block 32 (the builder's default) unnamed, as in earlier results."""
    return name if block == 32 else f"{name} block {block}"


def _nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


if __name__ == "__main__":
    sys.exit(main())
