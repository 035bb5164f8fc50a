"""PyTorch → ONNX for every task and modality (torch.onnx dynamo exporter), parity-checked.

The task says which output is traced (``Task.torch_output``), the modality which inputs the graph
takes, in which order, with which dynamic axes, and gives a trace example and a parity batch that
differs from it in every dynamic dimension. The legacy TorchScript exporter silently baked shapes
with transformers 5.x (max |diff| 4.8 on a batch of another shape), so only ``dynamo=True`` is
used. The exporter's debug metadata (stack traces with the build machine's source paths) is
stripped; the module name scopes stay, for the per-node analysis. The model is written under a
temporary name and renamed only after parity passes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

import onnx
import torch
from tqdm import tqdm

from modelpress.errors import BadInputError
from modelpress.export import fusion
from modelpress.export.parity import ParityReport, check_parity
from modelpress import fileio
from modelpress.fileio import save_onnx
from modelpress.modalities import get_modality

log = logging.getLogger(__name__)

#: node metadata the exporter writes that a deployed model must not carry (absolute source paths
#: of the build machine, FX graph dumps); ``pkg.torch.onnx.name_scopes`` stays
DEBUG_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


class _TaskModule(torch.nn.Module):
    """Positional inputs in the modality's order, so the graph's inputs are exactly those names.
    With ``additive_mask`` the 2-D attention mask becomes the additive term in the graph (the form
    ONNX Runtime's attention fusion matches, ``export.fusion``)."""

    def __init__(
        self, model: torch.nn.Module, task: Any, input_names: Sequence[str], *, additive_mask: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.input_names = tuple(input_names)
        self.additive_mask = additive_mask

    def forward(self, *inputs):
        kwargs = dict(zip(self.input_names, inputs))
        if self.additive_mask:
            kwargs["attention_mask"] = fusion.additive_mask(kwargs["attention_mask"])
        return self.task.torch_output(self.model(**kwargs))


@dataclass(frozen=True)
class ExportResult:
    path: str
    input_names: tuple[str, ...]
    output_name: str
    opset: int
    seconds: float
    parity: ParityReport
    #: the parity batch and PyTorch's outputs on it, for later checks of derived graphs (fusion)
    parity_feed: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    reference: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)


def export_progress(total: int) -> Any:
    """The export's progress bar on stderr (the steps: tracing, writing, the parity session and runs)."""
    bar = tqdm(total=total, desc="exporting", unit="step", leave=False)
    bar.set_postfix_str("tracing (torch.onnx.export)")
    return bar


def export_step(bar: Any, done: str, start: float) -> None:
    """One export step done: the bar moves on, and a log line says when (a bar leaves no trace in a log file)."""
    bar.update()
    bar.set_postfix_str("")
    log.info("export: %s (%.1f s)", done, time.perf_counter() - start)


def strip_debug_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key not in DEBUG_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


@contextlib.contextmanager
def staged_model(program: Any, out_path: Path, model: torch.nn.Module) -> Iterator[tuple[Path, onnx.ModelProto, bool]]:
    """``program`` saved under a temporary name in a folder beside ``out_path`` and loaded with its
    debug metadata stripped: ``(staged path, graph, external data?)``. A model past protobuf's limit
    (``fileio.EXTERNAL_DATA_BYTES``) is saved with its weights in ``<name>.data`` and its graph is
    loaded without them (they stay in that file: one copy of the weights less in memory). The
    caller saves the graph back (``save_onnx``: the references stay) and checks parity; the model
    is moved into place only when the block ends without error."""
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > fileio.EXTERNAL_DATA_BYTES
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as work:
        staged = Path(work) / out_path.name
        program.save(str(staged), external_data=large)
        yield staged, strip_debug_metadata(onnx.load(str(staged), load_external_data=False)), large
        if large:  # the weights first: a complete model.onnx always has its data beside it
            os.replace(staged.with_name(staged.name + ".data"), out_path.with_name(out_path.name + ".data"))
        os.replace(staged, out_path)


def export_onnx(
    model: torch.nn.Module, preprocessor: Any, out_path: str | Path, *, task: Any, opset: int = 18, atol: float = 1e-4
) -> ExportResult:
    out_path = Path(out_path)
    modality = get_modality(task.modality)
    names = modality.model_inputs(model, preprocessor)
    # encoders ORT can fuse are exported in the form its fusion matches (same computation)
    fusable = fusion.fusable(model.config) and "attention_mask" in names
    module = _TaskModule(model, task, names, additive_mask=fusable).eval()
    example, parity_feed = modality.export_examples(preprocessor, names)
    dynamic = modality.dynamic_shapes(names)
    start = time.perf_counter()
    with export_progress(3) as bar:
        with torch.no_grad(), fusion.fusable_form(model) if fusable else contextlib.nullcontext():
            program = torch.onnx.export(
                module,
                tuple(example[k] for k in names),
                dynamic_shapes=(tuple(dynamic[k] for k in names),),
                dynamo=True,
                opset_version=opset,
                input_names=list(names),
                output_names=[task.output_name],
                verbose=False,
            )
        export_step(bar, "traced", start)
        with staged_model(program, out_path, model) as (staged, graph, _large):
            if fusable:  # what ORT's fusion needs to know, for whoever quantizes this file later
                fusion.write_fusion_metadata(graph, model.config)
            seconds = time.perf_counter() - start
            graph_inputs = tuple(i.name for i in graph.graph.input)
            if graph_inputs != names:
                raise BadInputError(f"exported graph inputs {graph_inputs} differ from the model's {names}")
            save_onnx(graph, staged)
            export_step(bar, "written", start)
            with torch.no_grad():
                # the model as users run it (its own attention, the 2-D mask): parity also checks the fusable form
                plain = _TaskModule(model, task, names).eval()
                reference = {task.output_name: plain(*(parity_feed[k] for k in names)).numpy()}
            feed = {k: v.numpy() for k, v in parity_feed.items()}
            report = check_parity(str(staged), feed, reference, atol=atol, label="export")
            export_step(bar, "parity checked", start)
    log.info("exported %s in %.1fs (parity max |diff| %.2e)", out_path, seconds, report.max_abs_diff)
    return ExportResult(str(out_path), names, task.output_name, opset, round(seconds, 2), report, feed, reference)
