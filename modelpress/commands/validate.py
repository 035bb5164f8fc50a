"""``modelpress validate``: a candidate against the fp32 teacher, its report and the manifest ``gate`` trusts;
``--recipe`` runs the pipeline's validate stage on every ``validate.runtimes`` entry.

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from modelpress import stage_commands
from modelpress.commands.flags import (
    flags_named,
    given_flags,
    model_ref,
    pick,
    recipe_with_flags,
    stage_recipe,
    task_for,
)
from modelpress.errors import EXIT_GATE_FAILED, EXIT_OK
from modelpress.fileio import graph_input_shapes
from modelpress.manifest import refuse_foreign_manifest, write_report_manifest
from modelpress.modalities import get_modality
from modelpress.models import load_model_and_preprocessor
from modelpress.paths import REPORT_JSON, REPORT_MD, refuse_inside_bundle
from modelpress.recipe import GateConfig, ValidateConfig, fit_lengths, section_config
from modelpress.runtimes.registry import RUNTIMES
from modelpress.validate.gate import GateResult
from modelpress.validate.report import write_reports
from modelpress.validate.stage import file_opener, teacher_opener, validate_stage


def cmd_validate(args) -> int:
    out = Path(args.out)
    refuse_inside_bundle(out)
    refuse_foreign_manifest(out)  # the report's manifest.json goes there
    if args.recipe:
        given = given_flags(args)
        with flags_named(given):
            report = stage_commands.validate(recipe_with_flags(args, given), Path(args.candidate), out)
    else:
        report = _validate_flags(args)
    out.mkdir(parents=True, exist_ok=True)
    write_reports(report, out)
    # what `gate` trusts: a manifest of the two files written here (the folder's other files are
    # other stages'), so a report edited by hand afterwards is refused
    write_report_manifest(
        out,
        [out / REPORT_JSON, out / REPORT_MD],
        gate=report["gate"],
        candidate=Path(args.candidate) if Path(args.candidate).is_file() else None,
    )
    gate = GateResult.from_dict(report["gate"])
    print(f"report: {out / 'report.json'}")
    print(gate.line())
    return EXIT_OK if gate.passed else EXIT_GATE_FAILED


def _validate_flags(args) -> dict[str, Any]:
    """``modelpress validate`` without a recipe: one candidate on one runtime, from the flags and the
    dataclass defaults."""
    stage_recipe(args)  # --set without --recipe is refused
    ref = model_ref(args.teacher, None, "--teacher")
    task = task_for(args, None, ref)
    model, preprocessor = load_model_and_preprocessor(ref, task)
    values = dataclasses.asdict(ValidateConfig())
    changes = {
        "eval_data": args.eval_data,
        "eval_format": args.eval_format,
        "batch_sizes": args.batch_sizes,
        "seq_lengths": args.seq_lengths,
        "num_samples": args.num_samples,
    }
    values.update({k: v for k, v in changes.items() if v is not None})
    cfg = section_config(ValidateConfig, "validate", values)
    gate_cfg = section_config(
        GateConfig, "gate", {"max_drop": pick(args.max_drop, None, "gate", "max_drop", GateConfig)}
    )
    modality = get_modality(task.modality)
    # the flags' lengths the model cannot take are refused, under the flag's own name; the defaults are clipped
    flags = {f"validate.{k}": (f"--{k.replace('_', '-')}", v) for k, v in changes.items() if v is not None}
    with flags_named(flags):
        fitted_sections, fitted = fit_lengths(
            {"validate": cfg},
            task=task,
            modality=modality,
            model_config=model.config,
            preprocessor=preprocessor,
            written=lambda key: key in flags,
        )
    cfg, task = fitted_sections["validate"], task.with_lengths(fitted)
    es = task.read_eval(cfg.eval_data, cfg, model_config=model.config, preprocessor=preprocessor)
    runtime = args.runtime or ("openvino" if args.candidate.endswith(".xml") else "onnxruntime")
    names = modality.check_graph_inputs(RUNTIMES.get(runtime).graph_inputs(args.candidate), source=args.candidate)
    shapes = graph_input_shapes(args.candidate) if args.candidate.endswith(".onnx") else None
    encoder = modality.encoder(preprocessor, input_names=names, max_length=cfg.max_length, input_shapes=shapes)
    report = validate_stage(
        task=task,
        cfg=cfg,
        gate_cfg=gate_cfg,
        teacher=teacher_opener(model, task=task, encoder=encoder, threads=cfg.threads),
        candidates=[
            file_opener(
                Path(args.candidate),
                task=task,
                encoder=encoder,
                threads=cfg.threads,
                name="candidate",
                runtime=runtime,
                **cfg.runner_options(runtime),
            )
        ],
        eval_set=es,
        name=Path(args.candidate).stem,
    )
    report["defaults_clipped"] = dict(fitted.clipped)
    return report
