"""Output sensitivity (``quantize.auto_sensitivity = "output"``): which int8 node costs the model's
*outputs* most, the order in which the accuracy-aware search (``quantize.auto``) returns nodes to fp32.

The per-node SQNR of ``analysis`` measures each node in isolation on fp32 inputs: it cannot see how
an error grows through the layers after the node, so a node early in the network with a modest SQNR
can cost the outputs more than a late one with a worse SQNR (a cross-encoder's first FFN output
projection moved its ranking more than the two projections with the lowest SQNR: bench/rerank_bench.py).
Here each node is measured where its user sees it: the whole int8 model is run on calibration batches
with that node alone back in fp32 (leave one out), and the node's gain is how much the RMS error of
the model's outputs against the fp32 model falls. Nodes are ranked by gain, largest first. Nodes that
leave the same int8 graph (the Q, K and V projections of one fused Attention) are measured once.
Costs one quantized write and one run over the batches per node: a few minutes for a 6-layer encoder.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnxruntime as ort

from modelpress.export.names import module_names
from modelpress.quantize.static import QuantPlan, write_quantized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputSensitivity:
    node: str  # the ONNX node
    module: str | None  # the module path it came from, when known
    output_rms: float  # RMS output error against fp32 of the int8 model with this node alone in fp32
    gain: float  # the int8 model's RMS output error minus output_rms: what returning the node buys

    def to_dict(self) -> dict:
        return asdict(self)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _outputs(session: ort.InferenceSession, feeds: list[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Every output of every batch, flattened into one vector (batches keep their order)."""
    names = [i.name for i in session.get_inputs()]
    return np.concatenate(
        [np.asarray(v, dtype=np.float64).ravel() for f in feeds for v in session.run(None, {k: f[k] for k in names})]
    )


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def int8_output_rms(
    plan: QuantPlan, fp32_model: str | Path, feeds: Iterable[Mapping[str, np.ndarray]], *, max_batches: int = 16
) -> float:
    """The RMS error of the plan's int8 model's outputs (every target int8) against ``fp32_model``."""
    batches = list(itertools.islice(iter(feeds), max_batches))
    with tempfile.TemporaryDirectory(prefix="modelpress-sensitivity-") as work:
        path = Path(work) / "int8.onnx"
        write_quantized(plan, path)
        return _rms(_outputs(_session(path), batches), _outputs(_session(Path(fp32_model)), batches))


def output_sensitivity(
    plan: QuantPlan, fp32_model: str | Path, feeds: Iterable[Mapping[str, np.ndarray]], *, max_batches: int = 16
) -> list[OutputSensitivity]:
    """Every target node of ``plan`` by how much returning it alone to fp32 lowers the RMS error of the
    int8 model's outputs against ``fp32_model`` on (up to ``max_batches`` of) ``feeds``; largest gain first."""
    batches = list(itertools.islice(iter(feeds), max_batches))
    reference = _outputs(_session(Path(fp32_model)), batches)
    modules = module_names(plan.model)
    measured: dict[tuple[str, ...], float] = {}  # the int8 nodes a write left → its RMS error
    with tempfile.TemporaryDirectory(prefix="modelpress-sensitivity-") as work:
        path = Path(work) / "candidate.onnx"

        def error(keep: tuple[str, ...]) -> float:
            int8 = tuple(sorted(write_quantized(plan, path, keep_fp32=keep).quantized_nodes))
            if int8 not in measured:
                measured[int8] = _rms(_outputs(_session(path), batches), reference)
            return measured[int8]

        full = error(())
        rows = []
        for target in plan.targets:
            rms = error((target.node_name,))
            rows.append(OutputSensitivity(target.node_name, modules.get(target.node_name), rms, full - rms))
            log.info("output sensitivity: %s %.5f (int8 %.5f)", target.node_name, rms, full)
    return sorted(rows, key=lambda r: -r.gain)
