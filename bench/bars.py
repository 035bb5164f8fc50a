"""`python -m bench.bars`: issue #23's bars, read from the benches' JSONs (bench/results/*.json).

Every bench JSON of a kind the bars speak about (the MiniLM encoder bench, the vision bench's ViT and
ResNet, the UPOS tagger, the GPT) gives one line per bar: ``met``, ``not met``, ``not measured`` (the file
predates the ``selected`` record, or lacks the row the bar needs) or ``not applicable`` (a VNNI bar on a
CPU without VNNI), with the figure, its 95 % interval where the bench kept rounds, and the machine the
file was measured on. The figures come from the JSON alone: nothing is re-timed here.

The bars:

* every default (the selected artifact) is no slower than ORT fp32 at its selection shape; as the
  selection itself judges it, its ratio interval must not lie wholly above 1 (a bench that did not time
  that shape falls back on the press's own measure, and says so);
* MiniLM: selected ≤ 0.9× the fastest peer row at b32×128 and on the real workload; its STS-B Spearman
  drop from PyTorch fp32 ≤ 0.1 points; our ORT int8 ≥ 1.35× ORT fp32's throughput at b32;
* ResNet: selected ≤ 0.95× OpenVINO + NNCF int8 at b32; ViT: selected ≤ 0.95× OpenVINO fp32 at b32;
* on a VNNI / AMX CPU: MiniLM selected ≤ 0.9× OpenVINO + NNCF int8 at b32 and on the real workload.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from bench.selected import SELECTED

RESULTS = Path(__file__).resolve().parent / "results"
MET, NOT_MET, NOT_MEASURED, NOT_APPLICABLE = "met", "not met", "not measured", "not applicable"
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class Bar:
    source: str  # the JSON's file name
    model: str
    bar: str
    verdict: str  # MET | NOT_MET | NOT_MEASURED | NOT_APPLICABLE
    detail: str
    machine: str

    def line(self) -> str:
        return f"{self.verdict:<15}{self.model}: {self.bar} — {self.detail}"


def machine_text(data: Mapping[str, Any]) -> str:
    m = data.get("machine")
    if not isinstance(m, dict):
        return "machine not recorded"
    flags = m.get("kernel_flags") or m.get("int8_flags") or []
    parts = [str(m.get("cpu", "?")) + (f" {m['family_model']}" if m.get("family_model") else "")]
    if m.get("microarchitecture"):
        parts.append(f"archspec {m['microarchitecture']} (target {m.get('target', '?')})")
    parts.append(" ".join(flags) if flags else "flags not recorded")
    return ", ".join(parts)


def has_vnni(data: Mapping[str, Any]) -> bool | None:
    """Whether the file's machine has a non-saturating int8 dot product (None: not recorded)."""
    m = data.get("machine")
    if not isinstance(m, dict):
        return None
    flags = m.get("kernel_flags") or m.get("int8_flags")
    if flags is None and "int8_gemm_saturates" not in m:
        return None
    return any(f in (flags or ()) for f in VNNI_FLAGS) or m.get("int8_gemm_saturates") is False


def _interval(r: Mapping[str, Any]) -> str:
    ci = r.get("ci95")
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""


def _ratios_at(sel: Mapping[str, Any], shape: str) -> Mapping[str, Any] | None:
    """The selected record's ratios at ``shape`` (``b32xs32`` finds a bench's ``b32`` too)."""
    ratios = sel.get("ratios") or {}
    return ratios.get(shape) or ratios.get(shape.split("xs")[0])


def _selected(sel: Any) -> Mapping[str, Any] | None:
    return sel if isinstance(sel, dict) and sel.get("candidate") else None


def not_slower_than_fp32(sel: Any) -> tuple[str, str]:
    """The selected default ÷ ORT fp32 at its selection shape: met unless the interval is wholly above 1."""
    sel = _selected(sel)
    if sel is None:
        return NOT_MEASURED, "no selected artifact in this file"
    shape = sel.get("selection_shape") or "?"
    at = _ratios_at(sel, shape)
    r, where = (at or {}).get("vs_ort_fp32"), "this bench"
    if r is None:
        r, where = sel.get("press_vs_ort_fp32"), "the press's own timing (the bench did not time this shape)"
    if not r or r.get("value") is None:
        return NOT_MEASURED, f"`{sel['candidate']}`: no ORT fp32 ratio at {shape}"
    ci = r.get("ci95") or [r["value"], r["value"]]
    verdict = MET if r["value"] <= 1.0 or ci[0] <= 1.0 else NOT_MET
    noise = " (within noise)" if verdict == MET and r["value"] > 1.0 else ""
    return verdict, f"`{sel['candidate']}` {r['value']:.3f}×{_interval(r)} ORT fp32 at {shape}{noise}, {where}"


def at_most(sel: Any, shape: str, row: str | None, limit: float) -> tuple[str, str]:
    """The selected artifact's time ÷ ``row``'s (None: the fastest peer row) at ``shape`` ≤ ``limit``."""
    sel = _selected(sel)
    if sel is None:
        return NOT_MEASURED, "no selected artifact in this file"
    at = _ratios_at(sel, shape) or {}
    r = at.get("vs_fastest_peer") if row is None else (at.get("vs") or {}).get(row)
    if not r:
        return NOT_MEASURED, f"`{sel['candidate']}`: no {row or 'peer'} row timed at {shape}"
    who = f"fastest peer `{r.get('peer')}`" if row is None else f"`{row}`"
    verdict = MET if r["value"] <= limit else NOT_MET
    return verdict, f"`{sel['candidate']}` {r['value']:.3f}×{_interval(r)} {who} at {shape} (bar ≤ {limit})"


def _encoder_rows(data: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """The run_bench rows at 2 threads (the issue's setting), else at the most threads timed."""
    threads = data.get("threads") or {}
    if not threads:
        return None
    t = "2" if "2" in threads else max(threads, key=int)
    return t, threads[t]


def encoder_bars(data: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    sel = data.get("selected")
    rows_at = _encoder_rows(data)
    out = [("MiniLM", "default no slower than ORT fp32 at its selection shape", *not_slower_than_fp32(sel))]
    for shape in ("b32xs128", "workload"):
        out.append(("MiniLM", f"selected ≤ 0.9× the fastest peer at {shape}", *at_most(sel, shape, None, 0.9)))
    drop: tuple[str, str] = (NOT_MEASURED, "no selected row with a Spearman")
    if rows_at:
        t, rows = rows_at
        ref, mine = rows.get("pytorch-fp32", {}).get("spearman"), rows.get(SELECTED, {}).get("spearman")
        if ref is not None and mine is not None:
            d = ref - mine
            drop = (MET if d <= 0.1 else NOT_MET, f"{ref:.2f} → {mine:.2f}: drop {d:.2f} points ({t} threads)")
    out.append(("MiniLM", "selected STS-B Spearman drop ≤ 0.1 points", *drop))
    speed: tuple[str, str] = (NOT_MEASURED, "no ort-fp32 / modelpress-int8 rows")
    if rows_at:
        t, rows = rows_at
        fp32, int8 = rows.get("ort-fp32", {}).get("b32_median_ms"), rows.get("modelpress-int8", {}).get("b32_median_ms")
        if fp32 and int8:
            x = fp32 / int8
            speed = (MET if x >= 1.35 else NOT_MET, f"{x:.3f}× ({fp32:.1f} / {int8:.1f} ms, {t} threads)")
    out.append(("MiniLM", "our ORT int8 ≥ 1.35× ORT fp32's throughput at b32", *speed))
    vnni = has_vnni(data)
    for shape in ("b32xs128", "workload"):
        bar = f"VNNI/AMX: selected ≤ 0.9× OpenVINO + NNCF int8 at {shape}"
        if vnni is None:
            out.append(("MiniLM", bar, NOT_MEASURED, "the machine's flags are not recorded"))
        elif not vnni:
            out.append(("MiniLM", bar, NOT_APPLICABLE, "no VNNI/AMX on this machine"))
        else:
            out.append(("MiniLM", bar, *at_most(sel, shape, "openvino-nncf-int8", 0.9)))
    return out


#: the vision bench's per-model bar beyond the fp32 floor: (name, the row, the limit)
VISION_BARS = {"resnet": ("ResNet", "openvino-nncf-int8", 0.95), "vit": ("ViT", "openvino-fp32", 0.95)}


def vision_bars(data: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    for kind, model in (data.get("models") or {}).items():
        name, row, limit = VISION_BARS.get(kind, (kind, None, None))
        sel = model.get("selected")
        out.append((name, "default no slower than ORT fp32 at its selection shape", *not_slower_than_fp32(sel)))
        if row is not None and limit is not None:
            out.append((name, f"selected ≤ {limit}× `{row}` at b32", *at_most(sel, "b32", row, limit)))
    return out


def single_model_bars(model: str) -> Any:
    def bars(data: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
        sel = data.get("selected")
        return [(model, "default no slower than ORT fp32 at its selection shape", *not_slower_than_fp32(sel))]

    return bars


#: which files the bars read, by their keys (as bench/docs_figures.py tells its kinds apart)
KINDS = [
    (lambda d: isinstance(d.get("threads"), dict), encoder_bars),
    (lambda d: "models" in d, vision_bars),
    (lambda d: "fidelity" in d, single_model_bars("GPT")),
    (lambda d: "press" in d and "latency_ms" in d and "queries" not in d, single_model_bars("UPOS tagger")),
]


def check_file(path: Path) -> list[Bar]:
    """The bars one results file speaks about (none for a kind without bars: rerank, distill, lm_scale)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        return []
    for matches, bars in KINDS:
        if matches(data):
            machine = machine_text(data)
            return [Bar(path.name, m, b, v, d, machine) for m, b, v, d in bars(data)]
    return []


def check(results: Path = RESULTS) -> list[Bar]:
    return [bar for path in sorted(Path(results).glob("*.json")) for bar in check_file(path)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bars", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="a folder of bench JSONs")
    args = parser.parse_args(argv)
    bars = check(args.results)
    source = None
    for bar in bars:
        if bar.source != source:
            source = bar.source
            print(f"\n{source} (machine: {bar.machine})")
        print("  " + bar.line())
    counts = {v: sum(b.verdict == v for b in bars) for v in (MET, NOT_MET, NOT_MEASURED, NOT_APPLICABLE)}
    print("\n" + ", ".join(f"{n} {v}" for v, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
