"""`python -m bench.int4_accuracy`: how close each weight-only int4 method keeps the bench GPT to its
fp32 teacher (accuracy only: no timing, so a contended machine measures it as well as a quiet one).

The GPT trained by ``bench.tiny_gpt`` (``--gpt``, default ``artifacts/gpt``) is exported as
``modelpress run`` exports it, then weight-only quantized from the same graph — int8 and int4
round-to-nearest (ORT's quantizer: no data), int4 AWQ and GPTQ from the recipe's calibration set
(``configs/gpt-small.toml``'s ``[calibration]``), each with an int8 budget, the LM head left fp32 or
8-bit (``head_bits``; every other row keeps it int4) — block 32 unless ``--block-size`` says otherwise (the
defaults since stop 32: 128 and the head 8-bit), accuracy level 4. Each is scored against the PyTorch teacher
on the recipe's held-out windows (perplexity ratio, next-token agreement, mean KL) and on greedy
generation (the share of the teacher's first 32 new tokens reproduced, on ``--prompts`` held-out
16-token openings, as ``bench.lm_bench`` picks them), each with its 95 % paired bootstrap interval
(windows; prompts). Per MatMul, the method and bits it got and its output error on calibration
rows. Results: ``bench/results/lm_int4.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


from bench import machine

ROOT = Path(__file__).resolve().parents[1]

#: (row name, quantize keys) — the rows, in the order the table shows them; "int4-*" rows keep every weight
#: int4 (``head_bits = 4``) unless their name says otherwise
VARIANTS = (
    ("int8-rtn", {"weight_bits": 8}),
    ("int4-rtn", {"weight_bits": 4, "int4_method": "rtn", "head_bits": 4}),
    ("int4-awq", {"weight_bits": 4, "int4_method": "awq", "head_bits": 4}),
    ("int4-gptq", {"weight_bits": 4, "int4_method": "gptq", "head_bits": 4}),
    ("int4-awq-int8-10pct", {"weight_bits": 4, "int4_method": "awq", "int8_budget": 0.1, "head_bits": 4}),
    ("int4-gptq-int8-10pct", {"weight_bits": 4, "int4_method": "gptq", "int8_budget": 0.1, "head_bits": 4}),
    ("int4-gptq-int8-30pct", {"weight_bits": 4, "int4_method": "gptq", "int8_budget": 0.3, "head_bits": 4}),
    # the tied LM head left fp32 (llama.cpp's Q4_0 keeps its head at 6 bits): what the head's int4 costs
    ("int4-gptq-fp32-head", {"weight_bits": 4, "int4_method": "gptq", "nodes_to_exclude": ("lm_head",)}),
    # the head 8-bit (head_bits = 8: the builder's last_matmul:int8, NNCF's default), its lookup sharing it
    ("int4-rtn-int8-head", {"weight_bits": 4, "int4_method": "rtn", "head_bits": 8}),
    ("int4-gptq-int8-head", {"weight_bits": 4, "int4_method": "gptq", "head_bits": 8}),
)


def _interval(units, *, agreement: bool) -> dict:
    """The metric and its 95 % interval from a drop interval in points."""
    from modelpress.measures import uncertainty as U

    d = U.interval(units)
    if agreement:  # drop = 100 (1 − agreement)
        return {"value": round(1 - d.drop / 100, 5), "ci95": [round(1 - d.hi / 100, 5), round(1 - d.lo / 100, 5)]}
    return {"value": round(1 + d.drop / 100, 5), "ci95": [round(1 + d.lo / 100, 5), round(1 + d.hi / 100, 5)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.int4_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--gpt", type=Path, default=ROOT / "artifacts" / "gpt")
    parser.add_argument("--recipe", type=Path, default=ROOT / "configs" / "gpt-small.toml")
    parser.add_argument("--prompts", type=int, default=128, help="held-out 16-token openings for greedy agreement")
    parser.add_argument("--variants", nargs="*", default=[name for name, _ in VARIANTS])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=32, help="input rows per weight scale")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lm_int4.json")
    args = parser.parse_args(argv)

    import torch

    from modelpress.calibration_data.feeds import ExampleFeed
    from modelpress.export.exporters import export_model
    from modelpress.fileio import graph_input_shapes
    from modelpress.generation import TextGenerator
    from modelpress.modalities.causal_text import CAUSAL_TEXT
    from modelpress.models import load_model
    from modelpress.quantize.weight_only import quantize_weights_only
    from modelpress.recipe import load_recipe
    from modelpress.tasks import configure_task
    from modelpress.measures import uncertainty as U
    from modelpress.tasks.greedy_agreement import Continuations, agreement_counts
    from modelpress.validate.stage import open_predictor

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    task = configure_task(recipe.task, recipe.task_options)
    tokenizer = CAUSAL_TEXT.load_preprocessor(str(args.gpt / "model"))
    teacher = load_model(str(args.gpt / "model"), task)
    work = Path(tempfile.mkdtemp(prefix="lm-int4-"))
    fp32 = work / "model.onnx"
    export_model(task, teacher, tokenizer, fp32, opset=recipe.export.opset, atol=recipe.export.atol)
    shapes = graph_input_shapes(fp32)
    names = tuple(shapes)
    cal = recipe.calibration
    cal_encoder = CAUSAL_TEXT.encoder(tokenizer, input_names=names, max_length=cal.max_length, input_shapes=shapes)
    feeds = ExampleFeed(CAUSAL_TEXT.calibration_set(cal, tokenizer), cal_encoder, batch_size=cal.batch_size)
    base = recipe.quantize.with_(mode="weight-only", block_size=args.block_size, accuracy_level=4)

    files, quant = {}, {}
    for name, keys in VARIANTS:
        if name not in args.variants:
            continue
        started = time.perf_counter()
        summary = quantize_weights_only(fp32, work / f"{name}.onnx", base.with_(**keys), feeds)
        files[name] = work / f"{name}.onnx"
        quant[name] = {
            "keys": keys,
            "seconds": round(time.perf_counter() - started, 1),
            "file_mb": round(files[name].stat().st_size / 2**20, 2),
            "layers": [layer.__dict__ for layer in summary.layers],
            "eight_bit_nodes": list(summary.eight_bit_nodes),
        }
        print(f"{name}: quantized in {quant[name]['seconds']} s, {quant[name]['file_mb']} MB", file=sys.stderr)

    encoder = CAUSAL_TEXT.encoder(
        tokenizer, input_names=names, max_length=recipe.validate.max_length, input_shapes=shapes
    )
    ref = open_predictor("torch", teacher, task=task, encoder=encoder, threads=args.threads, name="pytorch-fp32")
    es = task.read_eval(recipe.validate.eval_data, recipe.validate, preprocessor=tokenizer)
    ref_out = ref.predict(list(es.windows), batch_size=8)
    held = Path(recipe.validate.eval_data).read_text(encoding="utf-8").splitlines()
    prompt_ids = [ids[:16] for ids in tokenizer(held[:2000], add_special_tokens=False)["input_ids"] if len(ids) >= 16]
    prompt_ids = prompt_ids[: args.prompts]
    with torch.inference_mode():
        out = teacher.generate(
            torch.tensor(prompt_ids),
            attention_mask=torch.ones(len(prompt_ids), 16, dtype=torch.long),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    teacher_new = Continuations(tuple(tuple(r) for r in out[:, 16:].tolist()))

    rows = {}
    for name, path in files.items():
        pred = open_predictor("onnxruntime", path, task=task, encoder=encoder, threads=args.threads, name=name)
        cand = pred.predict(list(es.windows), batch_size=8)
        metrics = task.fidelity(ref_out, cand, es)
        gen = TextGenerator(pred.runner, tokenizer, layout=encoder.layout)
        new = Continuations(tuple(map(tuple, gen.generate_ids(prompt_ids, max_new_tokens=32, stop_token_ids=[]))))
        greedy = U.PairedUnits(agreement_counts(teacher_new, new), U.ratio_complement(), "prompts")
        first32 = U.PairedUnits(tuple(a[:32] for a in greedy.arrays), U.ratio_complement(), "prompts")
        rows[name] = {
            "perplexity": round(metrics["perplexity"], 4),
            "perplexity_ratio": _interval(task.paired_units("perplexity_ratio", ref_out, cand, es), agreement=False),
            "next_token_agreement": _interval(
                task.paired_units("next_token_agreement", ref_out, cand, es), agreement=True
            ),
            "mean_kl": round(metrics["mean_kl"], 6),
            "greedy_agreement_32": _interval(greedy, agreement=True),
            "greedy_agreement_32_first32_prompts": _interval(first32, agreement=True),
            **quant[name],
        }
        pred.runner.close()
        r = rows[name]
        print(
            f"{name}: ppl ratio {r['perplexity_ratio']['value']:.4f} {r['perplexity_ratio']['ci95']}, "
            f"next-token {r['next_token_agreement']['value']:.4f} {r['next_token_agreement']['ci95']}, "
            f"greedy@32 {r['greedy_agreement_32']['value']:.4f} {r['greedy_agreement_32']['ci95']}",
            file=sys.stderr,
        )
    gpt = json.loads((args.gpt / "gpt.json").read_text()) if (args.gpt / "gpt.json").is_file() else {}
    result = {
        "machine": machine(),
        "gpt": gpt,
        "windows": len(es.windows),
        "prompts": len(prompt_ids),
        "block_size": args.block_size,
        "accuracy_level": 4,
        "int4": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
