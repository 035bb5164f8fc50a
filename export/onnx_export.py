"""PyTorch → ONNX for each task, with dynamic batch and sequence axes (torch.onnx dynamo exporter).

The legacy TorchScript exporter silently baked shapes with transformers 5.x (max |diff| 4.8 on a
batch of another shape), so only ``dynamo=True`` is used, and every export is checked for parity
on a batch whose batch size and sequence length both differ from the export example. The model is
written under a temporary name and renamed only after parity passes.
"""
from __future__ import annotations

import inspect
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from modelpress.export.parity import ParityReport, check_parity
from modelpress.errors import BadInputError

log = logging.getLogger(__name__)

#: the order of the graph's inputs (a model takes a prefix-compatible subset)
CANONICAL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXAMPLE_TEXTS = ("The quick brown fox jumps over the lazy dog.", "Export me, please.")
PARITY_TEXTS = (
    "A much longer sentence than the export example, so the sequence length differs from it.",
    "Short one.",
    "Batch size three also differs from the two-text example batch used for tracing.",
)
EXAMPLE_SEQ, PARITY_SEQ = 16, 23


class _TaskModule(torch.nn.Module):
    """Fixed keyword signature so the graph's input names and order are those of the parameters."""

    def __init__(self, model: torch.nn.Module, head) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.head.torch_output(self.model(**kwargs))


@dataclass(frozen=True)
class ExportResult:
    path: str
    input_names: tuple[str, ...]
    output_name: str
    opset: int
    seconds: float
    parity: ParityReport


def model_input_names(model: torch.nn.Module, tokenizer) -> tuple[str, ...]:
    """Inputs both the tokenizer produces and the model's forward accepts, in canonical order."""
    accepted = set(inspect.signature(model.forward).parameters)
    produced = set(getattr(tokenizer, "model_input_names", CANONICAL_INPUTS))
    names = tuple(n for n in CANONICAL_INPUTS if n in accepted and n in produced)
    if names[:2] != ("input_ids", "attention_mask"):
        raise BadInputError(f"{type(model).__name__}: export needs input_ids and attention_mask inputs")
    return names


def encode(tokenizer, texts, seq_len: int, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return {k: enc[k].to(torch.int64) for k in names}


def export_onnx(model: torch.nn.Module, tokenizer, out_path: str | Path, *, head, opset: int = 18,
                atol: float = 1e-4) -> ExportResult:
    out_path = Path(out_path)
    names = model_input_names(model, tokenizer)
    module = _TaskModule(model, head).eval()
    example = encode(tokenizer, EXAMPLE_TEXTS, EXAMPLE_SEQ, names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {k: {0: batch, 1: seq} for k in names}
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.onnx.export(module, (), kwargs=example, dynamic_shapes=dynamic, dynamo=True,
                                    opset_version=opset, output_names=[head.output_name], verbose=False)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    program.save(str(tmp), external_data=n_bytes > 1_800_000_000)
    seconds = time.perf_counter() - start
    graph_inputs = tuple(i.name for i in onnx.load(str(tmp), load_external_data=False).graph.input)
    if graph_inputs != names:
        raise BadInputError(f"exported graph inputs {graph_inputs} differ from the model's {names}")
    parity_feed = encode(tokenizer, PARITY_TEXTS, PARITY_SEQ, names)
    with torch.no_grad():
        reference = {head.output_name: module(**parity_feed).numpy()}
    report = check_parity(str(tmp), {k: v.numpy() for k, v in parity_feed.items()}, reference, atol=atol,
                          label="export")
    os.replace(tmp, out_path)
    log.info("exported %s in %.1fs (parity max |diff| %.2e)", out_path, seconds, report.max_abs_diff)
    return ExportResult(str(out_path), names, head.output_name, opset, round(seconds, 2), report)
