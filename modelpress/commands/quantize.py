"""``modelpress quantize``: static int8 from the flags, or (``--recipe``) the pipeline's quantize stage
by ``quantize.mode`` with each runtime's artifact.

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelpress import stage_commands
from modelpress.calibration_data.feeds import ExampleFeed
from modelpress.commands.flags import (
    flags_named,
    given_flags,
    model_ref,
    pick,
    recipe_with_flags,
    refuse_bundle_file,
    stage_recipe,
    task_for,
)
from modelpress.errors import EXIT_OK, BadInputError
from modelpress.fileio import fed_inputs, graph_input_shapes, load_onnx, write_json
from modelpress.memory import process_peak_rss_mb
from modelpress.modalities import get_modality
from modelpress.quantize.config import QuantizeConfig
from modelpress.quantize.static import quantize_static
from modelpress.recipe import CalibrationConfig, section_config
from modelpress.runtimes.target import resolve_target


def cmd_quantize(args) -> int:
    load_onnx(args.onnx, load_external_data=False)  # not a model: one line now, before any loading
    refuse_bundle_file(args.out)
    if args.recipe:
        if args.preprocessor:
            raise BadInputError(
                "--tokenizer: with --recipe the preprocessor is the recipe teacher's (--set teacher=... to change it)"
            )
        given = given_flags(args)
        with flags_named(given):
            done = stage_commands.quantize(recipe_with_flags(args, given), Path(args.onnx), Path(args.out))
        summary, side, also = done.outcome.summary, done.record, done.artifacts
    else:
        summary, side, also = _quantize_flags(args), Path(args.out).with_suffix(".quantization.json"), {}
    print(
        f"int8: {args.out} ({len(summary.quantized_nodes)} nodes int8, {len(summary.fp32_nodes)} fp32, "
        f"{summary.weight_bits}-bit weights; calibration {summary.calibration_seconds}s, process peak RSS "
        f"{process_peak_rss_mb()} MB; details {side})"
    )
    for runtime, path in also.items():
        print(f"{runtime}: {path}")
    return EXIT_OK


def _quantize_flags(args) -> Any:
    """``modelpress quantize`` without a recipe: static int8 from the flags and the dataclass defaults;
    the record goes to ``<out>.quantization.json``."""
    stage_recipe(args)  # --set without --recipe is refused
    graph = load_onnx(args.onnx, load_external_data=False)
    ref = model_ref(args.preprocessor, None, "--tokenizer")
    task = task_for(args, None, ref)
    changes = {
        "calibration_method": args.method,
        "percentile": args.percentile,
        "preset": args.preset,
        "format": args.format,
        "smoothquant": False if args.no_smoothquant else None,
        "nodes_to_exclude": tuple(args.exclude) if args.exclude is not None else None,
    }
    cfg = (
        QuantizeConfig()
        .with_(**{k: v for k, v in changes.items() if v is not None})
        .for_target(resolve_target(args.target or "auto"))
    )
    cal = section_config(
        CalibrationConfig,
        "calibration",
        {
            "data": pick(args.data, None, "calibration", "data", CalibrationConfig),
            "text_field": pick(args.text_field, None, "calibration", "text_field", CalibrationConfig),
            "num_samples": pick(args.num_samples, None, "calibration", "num_samples", CalibrationConfig),
            "max_length": pick(args.max_length, None, "calibration", "max_length", CalibrationConfig),
        },
    )
    modality = get_modality(task.modality)
    preprocessor = modality.load_preprocessor(ref)
    names = modality.check_graph_inputs(tuple(i.name for i in fed_inputs(graph.graph)), source=args.onnx)
    examples = modality.calibration_set(cal, preprocessor)
    encoder = modality.encoder(
        preprocessor, input_names=names, max_length=cal.max_length, input_shapes=graph_input_shapes(args.onnx)
    )
    summary = quantize_static(args.onnx, args.out, ExampleFeed(examples, encoder, batch_size=cal.batch_size), cfg)
    write_json(
        Path(args.out).with_suffix(".quantization.json"),
        {**summary.to_dict(), "process_peak_rss_mb": process_peak_rss_mb()},
    )
    return summary
