"""`python -m bench.lm_scale_bench`: a decoder of real size through `modelpress run` (issue #24).

Builds a random-weight decoder with the shape of Qwen2.5-0.5B (transformers ``Qwen2Config``:
hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocabulary 151,936, tied
embeddings; 494 M parameters, 1.98 GB of fp32 weights) or of Qwen2.5-1.5B (``--size 1.5b``), with
a byte-level BPE tokenizer trained here on the text of ``../shared/data`` (``bench.tiny_gpt``'s
split), and presses it with ``modelpress run`` once per mode (``int4``: weight-only MatMulNBits,
4 bits, block 32, accuracy level 4, every weight int4 — the builder's ``-p int4``; ``int4-b128``: the defaults,
block 128 and the LM head 8-bit; ``int8-wo``: 8 bits, block 32; ``w8a8``: static int8, the
default mode). Each run is its own process; its peak RSS is sampled from here (the process and its
children, every 0.2 s) and the run's own report gives each stage's time and peak RSS
(``report.json`` → ``stages``). Accuracy on random weights means nothing: the validation is cut to
a few windows and the gate is opened wide; what counts is that the run finishes, in what time and
memory, and the file sizes. Results go to ``bench/results/lm_scale.json``.

Memory: one run at a time, under the shared big-job lock (measured here at 0.5 B, contended: int4 6.6 GB before
the export and quantize stages stopped holding the PyTorch weights beside ONNX Runtime's, export 3.1 GB and
quantize 4.7 GB after; validation 6.2 GB before it kept KL sums instead of every model's log-probs and ran
the teacher alone, 4.2 GB after: int4 4.68 GB whole run, 2.48x the fp32 weights; static W8A8 past 16.5 GiB and
GPTQ 14.0 GiB before the fp32 weights stayed on disk while quantizing, about 4.3 GiB each after, alone). Peak RSS is
valid under contention; timings
from a contended machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from bench import lm_peers, machine, with_huge_pages
from modelpress.paths import MODEL_ONNX, PRESSED_FILES

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {
    # a few MB: the peers' and the runs' plumbing in a minute (``--size smoke``), no figure to report
    "smoke": dict(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        vocab_size=8192,
        tie_word_embeddings=True,
    ),
    "0.5b": dict(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "1.5b": dict(
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}

# round to nearest: on random weights a calibration set says nothing GPTQ/AWQ could use (their accuracy
# comes from the trained GPT: bench.int4_accuracy); "int4-gptq" measures what GPTQ's XᵀX costs in memory
# "int4" / "int4-gptq": the builder's `-p int4` settings (block 32, every weight int4); the "-b128" modes: the
# defaults since stop 32 (block 128, the head 8-bit)
INT4 = {
    "mode": "weight-only",
    "weight_bits": 4,
    "block_size": 32,
    "head_bits": 4,
    "accuracy_level": 4,
    "int4_method": "rtn",
}
MODES = {
    "int4": INT4,
    "int4-gptq": {**INT4, "int4_method": "gptq"},
    "int4-b128": {**INT4, "block_size": 128, "head_bits": 8},
    "int4-gptq-b128": {**INT4, "block_size": 128, "head_bits": 8, "int4_method": "gptq"},
    "int8-wo": {"mode": "weight-only", "weight_bits": 8, "block_size": 32, "accuracy_level": 4},
    "w8a8": {"mode": "static"},
}


def build(folder: Path, size: str) -> dict:
    """The random decoder and its tokenizer in ``folder`` (reused when already there)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bench.tiny_gpt import DATA, train_tokenizer, write_text

    if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
        return json.loads((folder / "bench_model.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    data = DATA if DATA.is_dir() else Path("/work/shared/data")  # a worktree sits one folder deeper
    train, _ = write_text(folder, data)
    tok = train_tokenizer(train, folder)
    torch.manual_seed(0)
    config = Qwen2Config(
        **SHAPES[size],
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    t0 = time.perf_counter()
    model = Qwen2ForCausalLM(config).eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(folder))
    info = {
        "size": size,
        "params": params,
        "fp32_weight_bytes": params * 4,
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    (folder / "bench_model.json").write_text(json.dumps(info))
    return info


def recipe(work: Path, model: Path, mode: str) -> Path:
    q = MODES[mode]
    quantize = "\n".join(f"{k} = {json.dumps(v)}" for k, v in q.items())
    text = f"""name = "{mode}"
teacher = "{model}"
task = "text-generation"

[calibration]
data = "{model / "train.txt"}"
num_samples = 32
max_length = 128
batch_size = 4

[quantize]
{quantize}

[validate]
eval_data = "{model / "heldout.txt"}"
max_length = 128
stride = 64
num_samples = 8
batch_size = 1
batch_sizes = [1]
seq_lengths = [128]
decode_contexts = [128]
latency_runs = 3
warmup_runs = 1
real_workload = false
runtimes = ["onnxruntime"]

[gate]
max_drop = 1000.0
"""
    path = work / f"{mode}.toml"
    path.write_text(text)
    return path


def press(recipe_path: Path, out: Path, log: Path) -> dict:
    """``modelpress run`` in its own process: exit code, wall time, sampled peak RSS."""
    # a press as a user runs it: not with the peers' huge pages (bench.with_huge_pages), which move its RSS
    env = {**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "modelpress", "run", str(recipe_path), "--out", str(out)]
    run = lm_peers.run_measured(cmd, log, cwd=ROOT, env=env)
    return {"exit_code": run["exit_code"], "wall_seconds": run["seconds"], "peak_rss_mb": run["peak_rss_mb"]}


def stages_from_log(log: Path) -> dict:
    """Each stage's time and peak RSS from the run's log (``modelpress.memory`` logs a line as each
    stage ends, on failure too): what a run that never wrote its report still tells."""
    import re

    found = {}
    pattern = re.compile(r"stage (\w+): ([\d.]+) s, peak RSS ([\d.]+|None) MiB")
    for m in pattern.finditer(log.read_text(errors="replace")):
        found[m[1]] = {"seconds": float(m[2]), "peak_rss_mb": None if m[3] == "None" else float(m[3])}
    return found


def _size_mb(path: Path) -> float | None:
    if not path.is_file():
        return None
    data = path.with_name(path.name + ".data")
    return round((path.stat().st_size + (data.stat().st_size if data.is_file() else 0)) / 2**20, 1)


def traced_export(model: Path, out: Path) -> Path:
    """The traced KV-cache graph of ``model`` (the one OpenVINO converts: our bundles hold the fused
    graph, whose ``GroupQueryAttention`` is ONNX Runtime's), reused when already written."""
    if out.is_file():
        return out
    from modelpress.export.exporters import export_model
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task

    task = configure_task("text-generation", {"decoder_graph": "traced"})
    decoder, tokenizer = load_model_and_preprocessor(str(model), task)
    export_model(task, decoder, tokenizer, out, opset=18, atol=1e-3)
    return out


def ours_variant(fp32: Path, out: Path, spec: str) -> Path:
    """Our int4 (round to nearest, accuracy level 4) of the bundle's fp32 graph ``fp32`` as ``spec``
    says: "b<block>" with "+head8" for ``head_bits = 8`` (e.g. "b128+head8"); reused when written."""
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.weight_only import quantize_weights_only

    block, _, head = spec.partition("+")
    path = out / spec / PRESSED_FILES["int4"]
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = QuantizeConfig(
            mode="weight-only",
            weight_bits=4,
            block_size=int(block.removeprefix("b")),
            accuracy_level=4,
            int4_method="rtn",
            head_bits=8 if head == "head8" else 4,
        )
        quantize_weights_only(fp32, path, cfg)
    return path


def peer_rows(
    model: Path,
    work: Path,
    ours: Path | None,
    *,
    threads: int,
    rounds: int,
    reuse: bool = False,
    variants: Sequence[str] = (),
) -> dict:
    """The LLM peers (``bench.lm_peers``) built from the same random decoder and timed in this process
    beside ours (``ours``: the int4 run's bundle model, on ONNX Runtime): the builds, sizes, load
    RSS, prefill and decode rows. Accuracy on random weights means nothing, so none is measured."""
    from transformers import AutoConfig, AutoTokenizer

    P = lm_peers
    from modelpress.kv_cache import KVLayout

    peers_dir = work / "peers"
    peers_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(model))
    text = (model / "heldout.txt").read_text(encoding="utf-8")
    stream = np.array(tok(text[:200_000])["input_ids"], np.int64)
    builds: dict[str, dict] = {}
    for precision in ("int4", "int8"):
        built = peers_dir / f"ort-genai-{precision}"
        builds[f"ort-genai-builder-{precision}"] = (
            {"reused": str(built), "file_mb": P.size_mb(built / "model.onnx")}
            if reuse and (built / "genai_config.json").is_file()
            else P.build_ort_genai(model, built, precision)
        )
    fp32 = traced_export(model, peers_dir / "traced" / "model.onnx")  # OpenVINO reads no GroupQueryAttention
    train = np.array(tok((model / "train.txt").read_text(encoding="utf-8")[:100_000])["input_ids"], np.int64)
    layout = KVLayout.from_config(AutoConfig.from_pretrained(str(model)))
    feeds = lm_peers.packed_feeds(train, layout, 16)
    ov_folder = peers_dir / "ov-nncf-int4" / "genai"
    try:
        builds["openvino-genai-nncf-int4"] = (
            {"reused": str(ov_folder), "file_mb": P.size_mb(ov_folder / "openvino_model.bin")}
            if reuse and (ov_folder / "openvino_model.xml").is_file()
            else P.build_ov_nncf_int4(fp32, model, peers_dir / "ov-nncf-int4", feeds)
        )
    except Exception as exc:  # noqa: BLE001 (a peer that fails to build is a row saying why)
        builds["openvino-genai-nncf-int4"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    for q in ("q4_0", "q8_0"):
        builds[f"llama.cpp-{q}"] = P.build_gguf(model, peers_dir / f"model.{q}.gguf", q)
    print(json.dumps(builds, indent=1), flush=True)

    makers = {
        **{
            f"ort-genai-builder-{p}": (
                lambda p=p: P.OrtGenAIPeer(f"ort-genai-builder-{p}", peers_dir / f"ort-genai-{p}", threads)
            )
            for p in ("int4", "int8")
        },
        "openvino-genai-nncf-int4": lambda: P.OVGenAIPeer(
            "openvino-genai-nncf-int4", peers_dir / "ov-nncf-int4" / "genai", threads
        ),
        **{
            f"llama.cpp-{q}": (lambda q=q: P.LlamaCppPeer(f"llama.cpp-{q}", peers_dir / f"model.{q}.gguf", threads))
            for q in ("q4_0", "q8_0")
        },
    }
    if ours is not None and ours.is_file():
        builds["modelpress-int4"] = {"file_mb": P.size_mb(ours)}  # built by the int4 run (its row above)
        paths = {"modelpress-int4": ours}
        for spec in variants:  # other int4 settings of the same fp32 graph, timed beside
            name = f"modelpress-int4-{spec.replace('+', '-')}"
            paths[name] = ours_variant(ours.parent / MODEL_ONNX, work / "variants", spec)
            builds[name] = {"spec": spec, "file_mb": P.size_mb(paths[name])}
        makers = {
            **{
                name: (lambda name=name, path=path: P.GeneratorPeer(name, path, threads))
                for name, path in paths.items()
            },
            **makers,
        }
    loaded, rows = [], {}
    for name, make in makers.items():
        if builds.get(name, {}).get("error"):
            rows[name] = {"build": builds[name]}
            continue
        peer, load = P.open_peer(make)
        rows[name] = {"build": builds.get(name, {}), **load}
        if peer is not None:
            loaded.append(peer)
    timed = P.time_peers(loaded, stream, rounds=rounds)
    for peer in loaded:
        rows[peer.name].update(timed[peer.name])
        peer.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SHAPES), default="0.5b")
    ap.add_argument("--modes", default="int4,w8a8", help=f"comma-separated, of {sorted(MODES)}")
    ap.add_argument("--work", type=Path, default=Path("/tmp/modelpress-lm-scale"))
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results/lm_scale.json")
    ap.add_argument(
        "--contended", action="store_true", help="the machine was shared: the rows' times are indicative only"
    )
    ap.add_argument("--peers", action="store_true", help="also build and time the LLM peers (bench.lm_peers)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of the peers' rows")
    ap.add_argument("--reuse-peers", action="store_true", help="reuse the peers' builds found in WORK/SIZE/peers")
    ap.add_argument(
        "--ours-variants",
        default="",
        help='comma-separated int4 settings of ours timed beside the peers, e.g. "b128,b32+head8" (see ours_variant)',
    )
    ap.add_argument(
        "--small-pages", action="store_true", help="time the peers without huge pages (bench.with_huge_pages)"
    )
    args = ap.parse_args(argv)
    if args.peers and not args.small_pages:
        with_huge_pages("bench.lm_scale_bench", argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        ap.error(f"unknown modes {unknown}")
    work = args.work / args.size
    model = work / "model"
    info = build(model, args.size)
    print(f"model: {info}", flush=True)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    row = results.setdefault(args.size, {"model": info, "runs": {}})
    row["model"] = info
    for mode in modes:
        print(f"pressing {args.size} {mode} ...", flush=True)
        out = work / "out"
        for old in (out / mode, out / f"{mode}.rejected"):
            shutil.rmtree(old, ignore_errors=True)
        measured = press(recipe(work, model, mode), out, work / f"{mode}.log")
        bundle = out / mode
        if not bundle.is_dir():
            bundle = out / f"{mode}.rejected"
        report = json.loads((bundle / "report.json").read_text()) if (bundle / "report.json").is_file() else {}
        files = {name: _size_mb(bundle / name) for name in (MODEL_ONNX, *PRESSED_FILES.values())}
        measured.update(
            stages=report.get("stages") or stages_from_log(work / f"{mode}.log"),
            files_mb={k: v for k, v in files.items() if v is not None},
            peak_rss_over_fp32_weights=round(measured["peak_rss_mb"] * 2**20 / info["fp32_weight_bytes"], 2),
            log=str(work / f"{mode}.log"),
            contended=args.contended,  # peak RSS holds under contention; the times do not
            machine=machine(),  # the CPU it was pressed on: archspec's name, target level, flags
        )
        row["runs"][mode] = measured
        print(json.dumps({mode: measured}, indent=1), flush=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    if args.peers:
        # the int4 run's model, by its precision's name (``model.int8.onnx`` in bundles pressed before the names)
        found = [
            work / "out" / f"int4{d}" / f for d in ("", ".rejected") for f in (PRESSED_FILES["int4"], "model.int8.onnx")
        ]
        ours = next((f for f in found if f.is_file()), None)
        row["peers"] = {
            "machine": machine(),  # with the malloc tunables the peers ran under
            "threads": args.threads,
            "rows": peer_rows(
                model,
                work,
                ours,
                threads=args.threads,
                rounds=args.rounds,
                reuse=args.reuse_peers,
                variants=[v.strip() for v in args.ours_variants.split(",") if v.strip()],
            ),
        }
        print(json.dumps(row["peers"], indent=1), flush=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
