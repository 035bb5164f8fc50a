"""The ``modelpress`` command line: one subcommand per stage, plus ``run`` (all) and ``gate``.

Logs and progress bars go to stderr; results (paths, gate verdicts) to stdout. Exit codes come
from ``modelpress.errors``: 0 ok, 1 internal error, 2 bad input or usage, 3 gate failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from modelpress.errors import (EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_OK, BadInputError,
                               ModelpressError, exit_code_for)

log = logging.getLogger("modelpress")


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors, which is our bad-input code; keep its one-line message."""

    def error(self, message: str) -> None:  # noqa: D401
        self.print_usage(sys.stderr)
        print(f"modelpress: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML file")
    p.add_argument("--out", default="artifacts", help="folder that receives <name>/ (default: artifacts)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe value (TOML syntax), repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="modelpress", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="all stages of a recipe into <out>/<name>/")
    _recipe_args(p)

    p = sub.add_parser("distill", help="train the student of a recipe (torchrun-compatible)")
    _recipe_args(p)

    p = sub.add_parser("export", help="export a Hugging Face model to ONNX (parity-checked)")
    p.add_argument("model", help="hub id | local folder | package:<module>")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--task", default="feature-extraction", choices=["feature-extraction", "text-classification"])
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--trust-remote-code", action="store_true")

    p = sub.add_parser("quantize", help="static int8 (Q/DQ) quantization of an ONNX model")
    p.add_argument("onnx", help="fp32 ONNX model (from `modelpress export`)")
    p.add_argument("--tokenizer", required=True, help="tokenizer: hub id | folder | package:<module>")
    p.add_argument("--data", required=True, help="calibration texts (.txt/.jsonl/.csv/.tsv/datasets folder)")
    p.add_argument("--out", required=True, help="output int8 .onnx path")
    p.add_argument("--text-field", default="text")
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--percentile", type=float, default=99.999)
    p.add_argument("--preset", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--format", default="auto", choices=["auto", "qdq", "ort"])
    p.add_argument("--no-smoothquant", action="store_true")
    p.add_argument("--exclude", nargs="*", default=[], metavar="NODE", help="node names kept fp32")

    p = sub.add_parser("validate", help="compare an ONNX candidate with the PyTorch fp32 teacher")
    p.add_argument("--teacher", required=True, help="hub id | folder | package:<module>")
    p.add_argument("--candidate", required=True, help="candidate ONNX model (int8)")
    p.add_argument("--eval-data", required=True)
    p.add_argument("--eval-format", default="auto", choices=["auto", "text", "pairs", "stsb"])
    p.add_argument("--task", default="feature-extraction", choices=["feature-extraction", "text-classification"])
    p.add_argument("--out", required=True, help="folder for report.json / report.md")
    p.add_argument("--max-drop", type=float, default=0.5)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--seq-lengths", type=int, nargs="+", default=[128])
    p.add_argument("--num-samples", type=int, default=0)

    p = sub.add_parser("gate", help="exit 0 if the run's candidate is within --max-drop of the teacher, else 3")
    p.add_argument("run_dir")
    p.add_argument("--max-drop", type=float, default=None, help="points; default: the recipe's gate.max_drop")
    p.add_argument("--metric", default=None, help="metric key of report.json (default: the run's)")

    p = sub.add_parser("analyze", help="per-node int8 error of a run (SQNR, weight vs activation), worst first")
    p.add_argument("run_dir")
    p.add_argument("--top", type=int, default=15, help="rows printed (default 15)")
    p.add_argument("--out", default=None, help="folder for analysis.json and plots/ (default RUN_DIR/analysis)")

    p = sub.add_parser("engine", help="build a TensorRT engine from the run's Q/DQ model (needs a GPU)")
    p.add_argument("run_dir")
    p.add_argument("--fp16", action="store_true", help="also build an fp16 engine from model.onnx")
    return parser


# -- commands -----------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from modelpress.pipeline import run_recipe
    from modelpress.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    outcome = run_recipe(recipe, Path(args.out))
    print(f"bundle: {outcome.bundle}")
    if outcome.gate is not None:
        print(outcome.gate.line())
        if not outcome.gate.passed:
            return EXIT_GATE_FAILED
    return EXIT_OK


def cmd_distill(args) -> int:
    from modelpress.pipeline import run_distill_only
    from modelpress.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    student = run_distill_only(recipe, Path(args.out))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"student: {student}")
    return EXIT_OK


def cmd_export(args) -> int:
    from modelpress.export.onnx_export import export_onnx
    from modelpress.models import load_model_and_tokenizer, resolve_model_ref
    from modelpress.recipe import TaskConfig
    from modelpress.tasks import make_head

    ref = resolve_model_ref(args.model)
    head = make_head(args.task, model_dir=ref if Path(ref).is_dir() else None, options=TaskConfig())
    model, tokenizer = load_model_and_tokenizer(ref, head, trust_remote_code=args.trust_remote_code)
    result = export_onnx(model, tokenizer, args.out, head=head, opset=args.opset, atol=args.atol)
    print(f"onnx: {result.path} (inputs {', '.join(result.input_names)}; parity max |diff| "
          f"{result.parity.max_abs_diff:.2e} on a {result.parity.feed_shape[0]}x{result.parity.feed_shape[1]} batch)")
    return EXIT_OK


def cmd_quantize(args) -> int:
    import onnx
    from transformers import AutoTokenizer

    from modelpress.calibration_data.feeds import TokenizedFeed
    from modelpress.calibration_data.loaders import load_texts, sample
    from modelpress.models import resolve_model_ref
    from modelpress.runtimes.quantize.config import QuantizeConfig
    from modelpress.runtimes.quantize.static import quantize_static

    if not Path(args.onnx).is_file():
        raise BadInputError(f"{args.onnx}: ONNX model not found")
    cfg = QuantizeConfig(calibration_method=args.method, percentile=args.percentile, preset=args.preset,
                         format=args.format,
                         smoothquant=not args.no_smoothquant, nodes_to_exclude=tuple(args.exclude))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_ref(args.tokenizer))
    names = tuple(i.name for i in onnx.load(args.onnx, load_external_data=False).graph.input)
    texts = sample(load_texts(args.data, text_field=args.text_field), args.num_samples)
    feed = TokenizedFeed(texts, tokenizer, batch_size=16, max_length=args.max_length, input_names=names)
    from modelpress.memory import process_peak_rss_mb

    summary = quantize_static(args.onnx, args.out, feed, cfg)
    side = Path(args.out).with_suffix(".quantization.json")
    details = {**summary.to_dict(), "process_peak_rss_mb": process_peak_rss_mb()}
    side.write_text(json.dumps(details, indent=2) + "\n", encoding="utf-8")
    print(f"int8: {args.out} ({len(summary.quantized_nodes)} nodes int8, {len(summary.fp32_nodes)} fp32; "
          f"calibration {summary.calibration_seconds}s, process peak RSS {details['process_peak_rss_mb']} MB; "
          f"details {side})")
    return EXIT_OK


def cmd_validate(args) -> int:
    from modelpress.inference import Predictor
    from modelpress.models import load_model_and_tokenizer, resolve_model_ref
    from modelpress.pipeline import validate_stage
    from modelpress.recipe import GateConfig, TaskConfig, ValidateConfig
    from modelpress.tasks import make_head
    from modelpress.runtimes.onnxruntime_runner import OnnxRuntimeRunner
    from modelpress.validate.report import write_reports

    ref = resolve_model_ref(args.teacher)
    head = make_head(args.task, model_dir=ref if Path(ref).is_dir() else None, options=TaskConfig())
    model, tokenizer = load_model_and_tokenizer(ref, head)
    cfg = ValidateConfig(eval_data=args.eval_data, eval_format=args.eval_format,
                         batch_sizes=tuple(args.batch_sizes), seq_lengths=tuple(args.seq_lengths),
                         num_samples=args.num_samples)
    runner = OnnxRuntimeRunner(args.candidate, name="candidate").__enter__()
    candidate = Predictor(runner, head, tokenizer, max_length=cfg.max_length, name="candidate")
    report = validate_stage(task=args.task, cfg=cfg, gate_cfg=GateConfig(max_drop=args.max_drop), head=head,
                            tokenizer=tokenizer, teacher_model=model, input_names=runner.input_names,
                            candidates=[candidate], name=Path(args.candidate).stem)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_reports(report, out)
    from modelpress.validate.gate import GateResult

    gate = GateResult(**report["gate"])
    print(f"report: {out / 'report.json'}")
    print(gate.line())
    return EXIT_OK if gate.passed else EXIT_GATE_FAILED


def cmd_gate(args) -> int:
    from modelpress.validate.gate import gate_report
    from modelpress.validate.report import read_json

    report = read_json(Path(args.run_dir) / "report.json")
    result = gate_report(report, max_drop=args.max_drop, metric=args.metric)
    print(result.line())
    return EXIT_OK if result.passed else EXIT_GATE_FAILED


def cmd_analyze(args) -> int:
    from modelpress.pipeline import analyze_run

    out = Path(args.out) if args.out else Path(args.run_dir) / "analysis"
    errors = analyze_run(Path(args.run_dir), out)
    print(f"{'node':<40}{'SQNR dB':>9}{'weight-only':>13}{'act-only':>10}{'rel L2':>9}")
    for e in errors[: args.top]:
        print(f"{e.node:<40}{e.sqnr_db:>9.1f}{e.weight_only_sqnr_db:>13.1f}{e.activation_only_sqnr_db:>10.1f}"
              f"{e.rel_l2:>9.4f}")
    print(f"analysis: {out / 'analysis.json'}")
    return EXIT_OK


def cmd_engine(args) -> int:
    from modelpress.pipeline import engine_stage

    out = engine_stage(Path(args.run_dir), fp16=args.fp16)
    print(f"engine: {out}")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "distill": cmd_distill, "export": cmd_export, "quantize": cmd_quantize,
            "validate": cmd_validate, "gate": cmd_gate, "analyze": cmd_analyze,
            "engine": cmd_engine}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch._dynamo", "torch.export", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except ModelpressError as exc:
        print(f"modelpress: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("modelpress: interrupted", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
