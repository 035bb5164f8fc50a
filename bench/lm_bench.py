"""`python -m bench.lm_bench`: the text-generation rows of the bench, on a small real GPT.

Trains the GPT (``bench.tiny_gpt``, reused when already trained), presses it with
``configs/gpt-small.toml`` through ``modelpress run`` (reused with ``--reuse``), then measures side
by side, in one process, with the same threads, interleaved round by round:

* **PyTorch fp32 eager with its KV cache** (the teacher: ``generate`` for end-to-end tokens/s, the
  same module with the graph's feed for prefill and decode steps);
* **ORT fp32** (``model.onnx``), **ORT dynamic int8** (``quantize_dynamic``, per-channel, of the
  same graph: the peer a user tries first), **ours** (``model.int8.onnx``, static W8A8 with
  SmoothQuant, calibrated on packed training text) and our **weight-only** alternative
  (``quantize.mode = "weight-only"``: MatMulNBits, 8 and 4 bits, block 32, accuracy level 4; int4
  also by AWQ and GPTQ from the calibration set, and AWQ with ``int8_budget = 0.1``), and ours
  with the tied LM head kept fp32 — no ONNX Runtime session's threads spin between runs (a spinning
  pool steals the cores from the next row: PEERS.md pitfall 9; ``load()`` of a text-generation bundle
  spins, measured by ``bench.lm_decode_bench``);
* **OpenVINO fp32** (its IR of ``model.onnx``), **NNCF int8 weight compression** of it
  (``nncf.compress_weights``' default) and **ours on OpenVINO** (the bundle's IR of the same plan);
* **the selected artifact**: the run presses for both runtimes with the default ``[select]``; its
  default, opened by ``modelpress.bundle.load`` (the JSON's ``selected``: bench.selected, with its
  ratios per prefill shape; the decode step and end to end are in the usual tables);

fidelity on the held-out text (strided perplexity, its ratio to the teacher's, next-token
agreement, mean KL) and greedy-generation agreement (share of the first 32 new tokens identical
to the teacher's, on 32 held-out prompts); prefill ms at 32/128/512 tokens; the decode step at
contexts 128/512, batch 1 and 8; end-to-end generation tokens/s at batch 1 and 8. Results go to
``bench/results/lm.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import machine
from bench.selected import SELECTED, open_selected, print_selected, selected_record

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _hf_generate(model, prompts: np.ndarray, new: int) -> list[list[int]]:
    import torch

    with torch.inference_mode():
        out = model.generate(
            torch.from_numpy(prompts),
            attention_mask=torch.ones_like(torch.from_numpy(prompts)),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[:, prompts.shape[1] :].tolist()


def _llama_windows(peer, es) -> list:
    """llama.cpp's scored windows (``measures.perplexity.ScoredWindow``) on the eval windows: its
    logits of every position (the peer opened with ``logits_all``)."""
    from modelpress.measures.perplexity import score_window

    scored = []
    for w in es.windows:
        peer.llm.reset()
        peer.llm.eval(w.ids.tolist())
        logits = np.asarray(peer.llm.scores[: len(w.ids)], np.float32)
        scored.append(score_window(logits, w.ids, np.arange(len(w.ids) - w.scored - 1, len(w.ids) - 1)))
    return scored


def _with_n_ctx(hf: Path, out: Path) -> Path:
    """``hf`` (links to its files) with ``n_ctx`` in its config: llama.cpp's GPT-2 converter reads
    it, and transformers 5's ``GPT2Config`` writes ``n_positions`` only."""
    out.mkdir(parents=True, exist_ok=True)
    for f in hf.iterdir():
        if f.name != "config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    config = json.loads((hf / "config.json").read_text(encoding="utf-8"))
    config.setdefault("n_ctx", config.get("n_positions"))
    (out / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return out


def gpt_peers(args, *, bundle: Path, recipe, task, tokenizer, encoder, held: list[str]) -> dict:
    """The LLM peers (``bench.lm_peers``) on the trained GPT, in this process: builds, sizes, load
    RSS, prefill/decode rows, and fidelity against the PyTorch teacher (perplexity ratio and
    next-token agreement on the recipe's eval windows; greedy agreement @32 on 32 held-out prompts).
    onnxruntime-genai's builder has no GPT-2 builder: its row says so (the 0.5 B Qwen shape of
    ``bench.lm_scale_bench --peers`` has it)."""
    from bench import lm_peers as P
    from modelpress.generation import TextGenerator
    from modelpress.models import load_model
    from modelpress.tasks.greedy_agreement import Continuations, greedy_agreement
    from modelpress.validate.stage import open_predictor

    hf, work = args.gpt / "model", Path(tempfile.mkdtemp(prefix="lm-peers-"))
    builds: dict[str, dict] = {}
    for precision in ("int4", "int8"):
        builds[f"ort-genai-builder-{precision}"] = P.build_ort_genai(hf, work / f"ort-genai-{precision}", precision)
    train = np.array(tokenizer((args.gpt / "train.txt").read_text(encoding="utf-8")[:200_000])["input_ids"], np.int64)
    feeds = P.packed_feeds(train, encoder.layout, 32)
    builds["openvino-genai-nncf-int4"] = P.build_ov_nncf_int4(
        bundle / "model.onnx", bundle / "tokenizer", work / "ov", feeds
    )
    for q in ("q4_0", "q8_0"):
        builds[f"llama.cpp-{q}"] = P.build_gguf(_with_n_ctx(hf, work / "hf"), work / f"gpt.{q}.gguf", q)

    teacher = load_model(str(hf), task)
    es = task.read_eval(recipe.validate.eval_data, recipe.validate, preprocessor=tokenizer)
    torch_pred = open_predictor("torch", teacher, task=task, encoder=encoder, threads=args.threads, name="teacher")
    ref = torch_pred.predict(list(es.windows), batch_size=8)
    torch_pred.runner.close()
    prompt_ids = [ids[:16] for ids in tokenizer(held[:400], add_special_tokens=False)["input_ids"] if len(ids) >= 16]
    prompts = np.array(prompt_ids[:32], dtype=np.int64)
    teacher_new = Continuations(tuple(map(tuple, _hf_generate(teacher, prompts, 32))))

    def agreement(made: list[list[int]]) -> float:
        return round(greedy_agreement(teacher_new, Continuations(tuple(map(tuple, made)))), 4)

    def fidelity(outputs) -> dict:
        m = task.fidelity(ref, outputs, es)
        return {k: round(m[k], 6) for k in ("perplexity_ratio", "next_token_agreement")}

    rows: dict[str, dict] = {}
    builds["modelpress-int8"] = {"file_mb": P.size_mb(bundle / "model.int8.onnx")}
    ours = open_predictor(
        "onnxruntime", bundle / "model.int8.onnx", task=task, encoder=encoder, threads=args.threads, name="ours"
    )
    makers = {
        "modelpress-int8": lambda: P.RunnerPeer("modelpress-int8", ours.runner, encoder.layout),
        **{
            f"ort-genai-builder-{p}": (
                lambda p=p: P.OrtGenAIPeer(f"ort-genai-builder-{p}", work / f"ort-genai-{p}", args.threads)
            )
            for p in ("int4", "int8")
        },
        "openvino-genai-nncf-int4": lambda: P.OVGenAIPeer(
            "openvino-genai-nncf-int4", work / "ov" / "genai", args.threads
        ),
        **{
            f"llama.cpp-{q}": (
                lambda q=q: P.LlamaCppPeer(f"llama.cpp-{q}", work / f"gpt.{q}.gguf", args.threads, logits_all=True)
            )
            for q in ("q4_0", "q8_0")
        },
    }
    loaded = []
    for name, make in makers.items():
        if builds.get(name, {}).get("error"):
            rows[name] = {"build": builds[name]}
            continue
        peer, load = P.open_peer(make)
        rows[name] = {"build": builds.get(name, {}), **load}
        if peer is None:
            continue
        loaded.append(peer)
        try:
            rows[name]["greedy_agreement_32"] = agreement([peer.greedy(list(map(int, p)), 32) for p in prompts])
        except Exception as exc:  # noqa: BLE001 (a peer that cannot generate from ids is a row saying so)
            rows[name]["greedy_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    rows["modelpress-int8"].update(fidelity(ours.predict(list(es.windows), batch_size=8)))
    ov_ir = open_predictor(
        "openvino",
        Path(builds["openvino-genai-nncf-int4"]["stateless"]),
        task=task,
        encoder=encoder,
        threads=args.threads,
        name="ov-nncf-int4",
    )
    rows["openvino-genai-nncf-int4"].update(fidelity(ov_ir.predict(list(es.windows), batch_size=8)))
    rows["openvino-genai-nncf-int4"]["greedy_agreement_32_openvino_runner"] = agreement(
        TextGenerator(ov_ir.runner, tokenizer, layout=encoder.layout).generate_ids(
            prompt_ids[:32], max_new_tokens=32, stop_token_ids=[]
        )
    )
    ov_ir.runner.close()
    for peer in loaded:
        if isinstance(peer, P.LlamaCppPeer):
            rows[peer.name].update(fidelity(_llama_windows(peer, es)))
    stream = np.array(token_stream_of(held, tokenizer), np.int64)
    timed = P.time_peers(loaded, stream, rounds=args.rounds_peers)
    for peer in loaded:
        rows[peer.name].update(timed[peer.name])
        peer.close()
    return {"threads": args.threads, "rows": rows}


def token_stream_of(texts: list[str], tokenizer) -> list[int]:
    from modelpress.modalities.causal_text import token_stream

    return list(token_stream(texts, tokenizer))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--gpt", type=Path, default=ROOT / "artifacts" / "gpt")
    parser.add_argument("--minutes", type=float, default=20.0, help="training wall time when the GPT is not there yet")
    parser.add_argument("--recipe", type=Path, default=ROOT / "configs" / "gpt-small.toml")
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts/gpt-small when it is there")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per shape")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds per shape")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lm.json")
    parser.add_argument("--peers", action="store_true", help="also build and time the LLM peers (bench.lm_peers)")
    parser.add_argument("--peers-only", action="store_true", help="only the peers' rows (into --out's peers key)")
    parser.add_argument("--rounds-peers", type=int, default=3, help="timed rounds of the peers' rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from bench.tiny_gpt import prepare
    from modelpress.fileio import graph_input_shapes
    from modelpress.modalities.causal_text import CAUSAL_TEXT, token_stream
    from modelpress.models import load_model
    from modelpress.pipeline import run_recipe
    from modelpress.recipe import load_recipe
    from modelpress.calibration_data.feeds import ExampleFeed
    from modelpress.runtimes.openvino_runner import convert_to_ir
    from modelpress.quantize.static import plan_quantization, write_quantized
    from modelpress.quantize.weight_only import quantize_weights_only
    from modelpress.tasks import configure_task
    from modelpress.generation import TextGenerator
    from modelpress.validate.compare import interleaved_latency
    from modelpress.measures.decode_latency import decode_latency
    from modelpress.tasks.greedy_agreement import Continuations, greedy_agreement
    from modelpress.validate.stage import open_predictor

    torch.set_num_threads(args.threads)
    info = prepare(args.gpt, minutes=args.minutes)
    recipe = load_recipe(args.recipe)
    bundle = ROOT / "artifacts" / recipe.name
    if not (args.reuse and (bundle / "report.json").is_file()):
        started = time.perf_counter()
        run_recipe(recipe, ROOT / "artifacts")
        print(f"pressed {bundle} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    report = json.loads((bundle / "report.json").read_text(encoding="utf-8"))

    task = configure_task(recipe.task, recipe.task_options)  # its stride: the windows the report scored
    tokenizer = CAUSAL_TEXT.load_preprocessor(str(bundle / "tokenizer"))
    teacher = load_model(str(args.gpt / "model"), task)
    shapes = graph_input_shapes(bundle / "model.onnx")
    names = tuple(shapes)
    encoder = CAUSAL_TEXT.encoder(
        tokenizer, input_names=names, max_length=recipe.validate.max_length, input_shapes=shapes
    )
    if args.peers or args.peers_only:
        held_text = (ROOT / recipe.validate.eval_data).read_text(encoding="utf-8").splitlines()
        peers = gpt_peers(
            args, bundle=bundle, recipe=recipe, task=task, tokenizer=tokenizer, encoder=encoder, held=held_text
        )
        if args.peers_only:
            old = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({**old, "peers": peers}, indent=2) + "\n", encoding="utf-8")
            print(json.dumps(peers, indent=1))
            return 0
    work = Path(tempfile.mkdtemp(prefix="lm-bench-"))
    dyn = work / "dynamic.int8.onnx"
    quantize_dynamic(str(bundle / "model.onnx"), str(dyn), per_channel=True, weight_type=QuantType.QInt8)
    files = {"ort-fp32": bundle / "model.onnx", "ort-dynamic-int8": dyn, "modelpress-int8": bundle / "model.int8.onnx"}
    # the same plan with the (tied) LM head kept fp32: what quantizing the head costs and buys
    cal = recipe.calibration
    cal_encoder = CAUSAL_TEXT.encoder(tokenizer, input_names=names, max_length=cal.max_length, input_shapes=shapes)
    feeds = ExampleFeed(CAUSAL_TEXT.calibration_set(cal, tokenizer), cal_encoder, batch_size=cal.batch_size)
    files["modelpress-int8-head-fp32"] = work / "int8.head-fp32.onnx"
    write_quantized(
        plan_quantization(
            bundle / "model.onnx",
            feeds,
            recipe.quantize.with_(nodes_to_exclude=(*recipe.quantize.nodes_to_exclude, "lm_head")),
        ),
        files["modelpress-int8-head-fp32"],
    )
    # the documented alternative, from the same fp32 graph: weight-only MatMulNBits at 8 and 4 bits
    for bits in (8, 4):
        path = work / f"weight-only.int{bits}.onnx"
        rtn = recipe.quantize.with_(mode="weight-only", weight_bits=bits, int4_method="rtn", int8_budget=0.0)
        quantize_weights_only(bundle / "model.onnx", path, rtn)
        files[f"modelpress-weight-only-int{bits}"] = path
    # data-aware int4 from the recipe's calibration set (quantize.int4_method; int8_budget: the mix)
    for suffix, keys in (
        ("awq", {"int4_method": "awq"}),
        ("gptq", {"int4_method": "gptq"}),
        ("awq-int8-10pct", {"int4_method": "awq", "int8_budget": 0.1}),
    ):
        path = work / f"weight-only.int4-{suffix}.onnx"
        cfg = recipe.quantize.with_(mode="weight-only", weight_bits=4, **keys)
        quantize_weights_only(bundle / "model.onnx", path, cfg, feeds)
        files[f"modelpress-weight-only-int4-{suffix}"] = path
    # OpenVINO: its fp32 IR of the graph, NNCF's int8 weight compression of it (its default, INT8_ASYM)
    # and the bundle's IR of our plan (the recipe asks for the openvino runtime)
    import nncf
    import openvino as ov

    ov_files = {
        "openvino-fp32": convert_to_ir(bundle / "model.onnx", work / "ov-fp32" / "model.xml"),
        "openvino-nncf-int8-weights": work / "ov-nncf" / "model.xml",
        "modelpress-int8-openvino": bundle / "openvino" / "model.xml",
    }
    started = time.perf_counter()
    compressed = nncf.compress_weights(ov.Core().read_model(str(ov_files["openvino-fp32"])))
    nncf_seconds = round(time.perf_counter() - started, 1)
    ov_files["openvino-nncf-int8-weights"].parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(compressed, str(ov_files["openvino-nncf-int8-weights"]), compress_to_fp16=False)
    preds = [open_predictor("torch", teacher, task=task, encoder=encoder, threads=args.threads, name="pytorch-fp32")]
    preds += [
        open_predictor("onnxruntime", path, task=task, encoder=encoder, threads=args.threads, name=name)
        for name, path in files.items()
    ]
    preds += [
        open_predictor("openvino", path, task=task, encoder=encoder, threads=args.threads, name=name)
        for name, path in ov_files.items()
    ]
    files.update(ov_files)
    preds.append(open_selected(bundle, args.threads))  # last in both: the generators zip files with preds
    files[SELECTED] = bundle

    # fidelity on the recipe's eval windows
    es = task.read_eval(recipe.validate.eval_data, recipe.validate, preprocessor=tokenizer)
    outputs = {p.name: p.predict(list(es.windows), batch_size=8) for p in preds}
    ref = outputs["pytorch-fp32"]
    fidelity = {
        name: {
            k: round(v, 6)
            for k, v in (
                task.reference_metrics(ref, es) if name == "pytorch-fp32" else task.fidelity(ref, out, es)
            ).items()
        }
        for name, out in outputs.items()
    }
    del outputs, ref

    # greedy generation agreement on 32 held-out prompts of 16 tokens
    held = (ROOT / recipe.validate.eval_data).read_text(encoding="utf-8").splitlines()
    prompt_ids = [ids[:16] for ids in tokenizer(held[:400], add_special_tokens=False)["input_ids"] if len(ids) >= 16][
        :32
    ]
    prompts = np.array(prompt_ids, dtype=np.int64)
    teacher_new = _hf_generate(teacher, prompts, 32)
    generators = {name: TextGenerator(p.runner, tokenizer, layout=encoder.layout) for name, p in zip(files, preds[1:])}
    gen_agree = {
        name: round(
            greedy_agreement(
                Continuations(tuple(map(tuple, teacher_new))),
                Continuations(tuple(map(tuple, g.generate_ids(prompt_ids, max_new_tokens=32, stop_token_ids=[])))),
            ),
            4,
        )
        for name, g in generators.items()
    }

    # prefill and decode steps (validation's own timers), on real 512-token stretches of held-out text
    stream = token_stream(held, tokenizer)
    long = [stream[i : i + 512] for i in range(0, 8 * 512, 512)]
    timing = replace(
        recipe.validate,
        batch_sizes=(1,),
        seq_lengths=(32, 128, 512),
        warmup_runs=3,
        latency_runs=args.rounds,
        latency_budget_s=60.0,
    )
    prefill = interleaved_latency(preds, long, timing)
    decode = decode_latency(preds, long, replace(timing, batch_sizes=(1, 8)), contexts=(128, 512))

    # end to end: a 128-token prompt, 64 new tokens, greedy, batch 1 and 8 (interleaved rounds)
    e2e: dict[str, dict[str, float]] = {p.name: {} for p in preds}
    for b in (1, 8):
        batch = np.stack([stream[i * 128 : (i + 1) * 128] for i in range(b)]).astype(np.int64)
        rows = [r.tolist() for r in batch]
        calls = {
            "pytorch-fp32": lambda: _hf_generate(teacher, batch, 64),
            **{
                name: (lambda g=g: g.generate_ids(rows, max_new_tokens=64, stop_token_ids=[]))
                for name, g in generators.items()
            },
        }
        times: dict[str, list[float]] = {k: [] for k in calls}
        for r in range(4):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                if r:
                    times[name].append(time.perf_counter() - t0)
        for name, t in times.items():
            e2e[name][f"b{b}_tokens_per_s"] = round(b * 64 / float(np.median(t)), 1)

    for p in preds:
        p.runner.close()
    torch_row = {(r["batch_size"], r["context"]): r for r in decode["pytorch-fp32"]}
    by_shape = {
        f"b{r['batch_size']}xs{r['seq_len']}": {n: rows[i]["rounds_ms"] for n, rows in prefill.items()}
        for i, r in enumerate(prefill["pytorch-fp32"])
    }
    selected = {**selected_record(bundle, by_shape), "gate_passed": report["gate"]["passed"]}
    result = {
        "machine": machine(),
        "threads": args.threads,
        "gpt": info,
        "run_gate": report["gate"],
        "selected": selected,
        "nncf_compress_seconds": nncf_seconds,
        "fidelity": fidelity,
        "greedy_generation_agreement_32": gen_agree,
        "prefill": prefill,
        "decode": decode,
        "end_to_end": e2e,
        "ratios_vs_pytorch": {
            name: {
                **{
                    f"prefill_{r['seq_len']}_speedup": round(t["p50_ms"] / r["p50_ms"], 3)
                    for r, t in zip(prefill[name], prefill["pytorch-fp32"])
                },
                **{
                    f"decode_b{r['batch_size']}_c{r['context']}_tokens_per_s_ratio": round(
                        r["tokens_per_s"] / torch_row[(r["batch_size"], r["context"])]["tokens_per_s"], 3
                    )
                    for r in decode[name]
                },
                **{f"e2e_{k}_ratio": round(v / e2e["pytorch-fp32"][k], 3) for k, v in e2e[name].items()},
            }
            for name in files
        },
    }
    if args.peers:
        result["peers"] = peers
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print(
        f"GPT: {info['parameters'] / 1e6:.1f} M parameters, {info['steps']} steps, held-out loss {info['heldout_loss']}"
    )
    print("| model | perplexity | ppl ratio | next-token agree | mean KL | greedy agree@32 |")
    print("|---|---|---|---|---|---|")
    for name, m in fidelity.items():
        print(
            f"| {name} | {m['perplexity']:.3f} | {m['perplexity_ratio']:.5f} | {m['next_token_agreement']:.4f} | "
            f"{m['mean_kl']:.5f} | {gen_agree.get(name, 1.0):.4f} |"
        )
    print(
        "\n| model | prefill 32 ms | prefill 128 ms | prefill 512 ms | decode b1 c128 tok/s | decode b1 c512 | "
        "decode b8 c128 | decode b8 c512 | e2e b1 tok/s | e2e b8 tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in preds:
        d = {(r["batch_size"], r["context"]): r["tokens_per_s"] for r in decode[p.name]}
        pre = [r["p50_ms"] for r in prefill[p.name]]
        print(
            f"| {p.name} | "
            + " | ".join(f"{x:.2f}" for x in pre)
            + " | "
            + " | ".join(f"{d[k]:.0f}" for k in ((1, 128), (1, 512), (8, 128), (8, 512)))
            + " | "
            + f"{e2e[p.name]['b1_tokens_per_s']:.0f} | {e2e[p.name]['b8_tokens_per_s']:.0f} |"
        )
    print("\nratios vs PyTorch fp32 eager:", json.dumps(result["ratios_vs_pytorch"], indent=1))
    print_selected(selected)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
