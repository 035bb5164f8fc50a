"""report.json (stable keys, documented in docs/report.md) and report.md (the same, for people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelpress.errors import BadInputError
from modelpress.fileio import write_json as _write_json
from modelpress.paths import RunPaths
from modelpress.tasks import get_task
from modelpress.validate.gate import GateResult

REPORT_SCHEMA = 2


def write_json(report: dict[str, Any], path: Path) -> None:
    _write_json(path, report)


def read_json(path: Path) -> dict[str, Any]:

    if not path.is_file():
        raise BadInputError(f"{path}: no report.json (run the pipeline first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path}: not valid JSON ({exc.msg})") from None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def _counts(eval_desc: dict[str, Any]) -> str:
    """The eval set's counts (``num_<what>``, as its record gives them), "12 examples, 3 queries"."""
    counts = {k[len("num_") :]: v for k, v in eval_desc.items() if k.startswith("num_") and v}
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())


def render_markdown(report: dict[str, Any]) -> str:

    task = get_task(report["task"])
    lines = [
        f"# modelpress report: {report['name']}",
        "",
        f"- task: `{report['task']}`; configured as `{json.dumps(report['task_config'])}`",
        f"- eval set: `{report['eval']['source']}` ({report['eval']['format']}, {_counts(report['eval'])})",
        *task.eval_lines(report["eval"]),
        "",
    ]
    clipped = report.get("defaults_clipped")
    if clipped:  # defaults the model could not take, cut to its positions
        lines[-1:-1] = [
            "- defaults fitted to the model's positions: "
            + "; ".join(f"`{k}` {c['default']} → {c['used']}" for k, c in clipped.items())
        ]
    gate = report.get("gate")
    if gate:
        verdict = "PASS" if gate["passed"] else "FAIL"
        lines += [f"## Gate: **{verdict}**", "", *GateResult.from_dict(gate).line().splitlines(), ""]
    seeds = report.get("calibration_seeds")
    if seeds:
        lines += [
            f"Calibration seeds: the bundle ships `{seeds['shipped']}`; the gate judged the worst, "
            f"`{seeds['judged']}`; spread {seeds['spread']:.2f} points.",
            "",
            "| candidate | metric | value | drop | 95% interval |",
            "|---|---|---|---|---|",
        ]
        for c in seeds["candidates"]:
            ci = f"[{c['drop_ci95'][0]:.2f}, {c['drop_ci95'][1]:.2f}]" if c.get("drop_ci95") else ""
            lines.append(f"| {c['name']} | {c['metric']} | {c['value']:.2f} | {c['drop']:.2f} | {ci} |")
        lines.append("")
    unc = report.get("uncertainty")
    if unc:
        lines += [
            "## Drop per metric, with its 95% paired bootstrap interval (points; > 0 is worse)",
            "",
            "| candidate | metric | drop | interval | n | McNemar p |",
            "|---|---|---|---|---|---|",
        ]
        for cand, per in unc.items():
            for metric, iv in per.items():
                p = "" if iv.get("mcnemar_p") is None else f"{iv['mcnemar_p']:.3g}"
                lines.append(
                    f"| {cand} | {metric} | {iv['drop']:.2f} | [{iv['drop_ci95'][0]:.2f}, "
                    f"{iv['drop_ci95'][1]:.2f}] | {iv['n']} {iv['unit']} | {p} |"
                )
        lines.append("")
    models = report["models"]
    metric_keys = sorted({k for m in models.values() for k in m["metrics"]})
    lines += [
        "## Fidelity vs the fp32 teacher",
        "",
        "| model | " + " | ".join(metric_keys) + " | size MB |",
        "|---" * (len(metric_keys) + 2) + "|",
    ]
    for name, m in models.items():
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(m["metrics"].get(k)) for k in metric_keys)
            + f" | {_fmt(m.get('size_mb'))} |"
        )
    lines += [
        "",
        "## Latency (ms, after warm-up; forward + head, tokenization excluded)",
        "",
        "| model | batch × seq | p50 | p95 | p99 | texts/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        for row in m["latency"]:
            lines.append(
                f"| {name} | {row['batch_size']} × {row['seq_len']} | {row['p50_ms']:.2f} | "
                f"{row['p95_ms']:.2f} | {row['p99_ms']:.2f} | {row['throughput_per_s']:.1f} |"
            )
    lines += task.report_sections(models)
    if any(m.get("real_workload") for m in models.values()):
        lines += [
            "",
            "## Real workload (eval texts, length-sorted, batch 32, dynamic padding)",
            "",
            "| model | texts | seconds | texts/s |",
            "|---|---|---|---|",
        ]
        for name, m in models.items():
            w = m.get("real_workload")
            if w:
                lines.append(f"| {name} | {w['texts']} | {w['seconds']:.2f} | {w['texts_per_s']:.1f} |")
    if report.get("ratios"):
        lines += ["", "## Latency ratios (candidate / teacher; < 1 is faster)", ""]
        for name, r in report["ratios"].items():
            lines.append(f"- {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    q = report.get("quantization")
    if q:
        lines += [
            "",
            "## Quantization",
            "",
            f"- preset `{q['preset']}`, calibration `{q['calibration_method']}`, SmoothQuant {q['smoothquant']}",
            f"- int8 nodes: {len(q['quantized_nodes'])}; fp32 MatMul/Gemm nodes: {len(q['fp32_nodes'])}; "
            f"weights {q.get('weight_bits', 8)}-bit",
            f"- calibration: {q['calibration_seconds']} s, peak RSS {q['peak_rss_mb']} MB",
        ]
        auto = q.get("auto")
        if auto:
            lines += [
                "",
                f"### Accuracy-aware search (mode auto): {'passed' if auto['passed'] else 'NO candidate passed'}",
                "",
                "| # | calibration | fp32 modules | int8 nodes | metric | drop | gate | p50 ms | chosen |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for c in auto["candidates"]:
                kept = ", ".join(c.get("fp32_modules") or c["fp32_nodes"]) or "-"
                lines.append(
                    f"| {c['index']} | {c['calibration_method']} | {kept} | "
                    f"{c['int8_nodes']} | {c['metric']:.3f} | {c['drop']:.3f} | "
                    f"{'pass' if c['passed'] else 'fail'} | {c['latency_ms']:.1f} | "
                    f"{'✔' if c['index'] == auto['chosen'] else ''} |"
                )
    lines += _selection_lines(report.get("selection"))
    classes = (report.get("quantization") or {}).get("int8_classes")
    if classes:  # select.int8_classes = "auto": which op classes stayed int8, and what decided it
        lines += ["", "## Int8 op classes (int8 only where it pays)", ""]
        lines += [
            f"- {d['op_class']} ({d['nodes']} nodes): {'int8' if d['int8'] else 'fp32'} — {d['why']}" for d in classes
        ]
    a = report.get("analysis")
    if a and a.get("worst"):
        lines += ["", "## Per-node int8 error (worst first; SQNR in dB, higher is better)", ""]
        if a.get("plot"):
            lines += [f"![per-node error]({a['plot']})", ""]
        lines += [
            "| module (ONNX node) | SQNR | weight-only SQNR | activation-only SQNR | rel. L2 |",
            "|---|---|---|---|---|",
        ]
        for e in a["worst"]:
            label = f"{e['module']} ({e['node']})" if e.get("module") else e["node"]
            lines.append(
                f"| {label} | {e['sqnr_db']:.1f} | {e['weight_only_sqnr_db']:.1f} | "
                f"{e['activation_only_sqnr_db']:.1f} | {e['rel_l2']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def _selection_lines(sel: dict[str, Any] | None) -> list[str]:
    """Every candidate for the bundle's default in one table (``validate.select``)."""
    if not sel:
        return []
    shapes = [f"b{r['batch_size']}xs{r['seq_len']}" for r in sel["candidates"][0]["latency"]]
    lines = [
        "",
        f"## Candidates for the default (selection at {sel['shape']}, ratios ÷ {sel['reference']})",
        "",
        sel["reason"],
        "",
    ]
    if sel.get("plot"):
        lines += [f"![latency vs drop]({sel['plot']})", ""]
    lines += [f"- {n}" for n in sel.get("notes") or ()]
    head = ["candidate", "runtime", "precision", "drop [95% CI]", "ratio [95% CI]"]
    head += [f"{s} p50/p95 ms" for s in shapes] + ["workload s", "size MB", "target", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in sel["candidates"]:
        ci = c["drop_ci95"]
        drop = "" if c["drop"] is None else f"{c['drop']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        drop += "" if c["accuracy_passed"] else " (fail)"
        r = c["ratio"]
        cells = [
            c["name"],
            c["runtime"],
            c["precision"],
            drop,
            f"{r['value']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
        ]
        cells += [f"{x['p50_ms']:.2f} / {x['p95_ms']:.2f}" for x in c["latency"]]
        cells += [_fmt(c["workload_s"]), _fmt(c["size_mb"]), c["target"], "**default**" if c["chosen"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def candidates_plot(sel: dict[str, Any], path: Path) -> None:
    """Latency ratio (÷ ORT fp32, with its interval) against the accuracy drop, one point per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for c in sel["candidates"]:
        r = c["ratio"]
        x, lo, hi = r["value"], r["ci95"][0], r["ci95"][1]
        y = c["drop"] or 0.0
        marker = "*" if c["chosen"] else ("o" if c["accuracy_passed"] else "x")
        ax.errorbar([x], [y], xerr=[[x - lo], [hi - x]], fmt=marker, markersize=12 if c["chosen"] else 7, capsize=3)
        ax.annotate(c["name"], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if sel.get("max_latency_ratio") is not None:
        ax.axvline(sel["max_latency_ratio"], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"time ÷ {sel['reference']} at {sel['shape']} (95% interval)")
    ax.set_ylabel("accuracy drop (points; > 0 is worse)")
    ax.set_title("candidates for the bundle's default (★ chosen, × failed accuracy)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(report: dict[str, Any], root: Path) -> None:
    paths = RunPaths(root)
    if report.get("selection"):  # next to the sensitivity plot
        candidates_plot(report["selection"], root / "plots" / "candidates.png")
        report["selection"]["plot"] = "plots/candidates.png"
    write_json(report, paths.report_json)
    paths.report_md.write_text(render_markdown(report), encoding="utf-8")
