"""Causal LM → one ONNX graph with a KV cache, usable for prefill and for every decode step.

The layout is the one ONNX Runtime GenAI and Optimum use: inputs ``input_ids`` [batch, new],
``attention_mask`` [batch, past + new] (0 on left padding), ``position_ids`` [batch, new] and, per
decoder layer ``i``, ``past_key_values.i.key`` / ``.value`` [batch, kv_heads, past, head_dim];
outputs ``logits`` [batch, new, vocab] and ``present.i.key`` / ``.value`` [batch, kv_heads,
past + new, head_dim]. A prefill feeds an empty past (length 0), a decode step feeds the last
``present`` back. The cache is built inside the graph from the flat tensors (transformers'
``DynamicCache``), so the family's own attention and cache code is what is traced.

Every dynamic dimension is exported as ``Dim.DYNAMIC`` (torch.export infers the relation of the
mask's length to past + new itself). Parity is checked against PyTorch on a prefill with an empty
past at a batch size and length other than the export example's, and then on several decode steps
fed with the graph's own ``present`` outputs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import torch

from modelpress.errors import BadInputError
from modelpress.export.fused_decoder import export_fused_decoder
from modelpress.export.onnx_export import ExportResult, export_progress, export_step, staged_model
from modelpress.export.parity import ParityReport, compare_outputs
from modelpress.fileio import save_onnx
from modelpress.memory import release_weight_pages
from modelpress.tasks.causal_lm_torch import CausalLMWithPast
from modelpress.kv_cache import FIXED_INPUTS, KVLayout, past_from_present, position_ids  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

EXAMPLE = {"batch": 2, "new": 3, "past": 4}  # the trace example: no dimension 0 or 1
PARITY = {"batch": 3, "prompt": 7, "steps": 3}  # prefill 3×7 on an empty past, then 3 decode steps


def _torch_step(module: CausalLMWithPast, feed: dict[str, np.ndarray], layout: KVLayout) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outs = module(
            *(torch.from_numpy(feed[k]) for k in FIXED_INPUTS),
            tuple(torch.from_numpy(feed[k]) for k in layout.past_names()),
        )
    return dict(zip(("logits", *layout.present_names()), (o.numpy() for o in outs)))


def _parity_feeds(
    vocab: int,
    layout: KVLayout,
    open_session: Callable[[], Any],
    module: CausalLMWithPast,
    *,
    atol: float,
    path: str,
    bar: Any = None,
) -> list[ParityReport]:
    """Prefill on an empty past, then decode steps fed with the graph's own ``present``. The graph
    runs every step first and its session is closed before PyTorch runs the same feeds: the fp32
    graph's weights and the model's are never in memory together (2× the weights of a 0.5 B decoder
    at once, otherwise)."""
    rng = np.random.default_rng(0)
    b, n = PARITY["batch"], PARITY["prompt"]
    mask = np.ones((b, n), np.int64)
    mask[0, :2] = 0  # one left-padded row
    feed = {
        "input_ids": rng.integers(0, vocab, (b, n)).astype(np.int64),
        "attention_mask": mask,
        "position_ids": position_ids(mask, n),
        **layout.empty(b),
    }
    names = ["logits", *layout.present_names()]
    session = open_session()
    ran = []  # (feed, the graph's outputs): a few MB (3 rows of 7–10 tokens)
    for step in range(PARITY["steps"] + 1):
        got = dict(zip(names, session.run(names, feed)))  # once: compared, then fed back
        ran.append((feed, got))
        nxt = got["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
        feed = {
            "input_ids": nxt,
            "attention_mask": mask,
            "position_ids": position_ids(mask, 1),
            **{p: got[q] for p, q in zip(layout.past_names(), layout.present_names())},
        }
    del session
    reports = []
    for step, (feed, got) in enumerate(ran):
        label = "export (prefill)" if step == 0 else f"export (decode step {step})"
        if bar is not None:
            bar.set_postfix_str(f"parity: {label[8:-1]}")
        reference = _torch_step(module, feed, layout)
        real = feed["attention_mask"].astype(bool)  # what is computed at left padding is undefined
        new = real[:, -feed["input_ids"].shape[1] :]
        select = {
            "logits": lambda a, m=new: a[m],
            **{name: (lambda a, m=real: np.moveaxis(a, 2, 1)[m]) for name in layout.present_names()},
        }
        reports.append(
            compare_outputs(
                got, reference, atol=atol, label=label, source=path, feed_shape=feed["input_ids"].shape, select=select
            )
        )
        if bar is not None:
            bar.update()
    return reports


def export_causal_lm(
    model: torch.nn.Module,
    tokenizer: Any,
    out_path: str | Path,
    *,
    opset: int = 18,
    atol: float = 1e-4,
    fused: bool = False,
) -> ExportResult:
    """``model`` (an ``AutoModelForCausalLM``) → ``out_path`` with its KV cache, parity-checked;
    ``fused``: the graph written with ONNX Runtime's fused operators (``export.fused_decoder``)."""
    if fused:
        return export_fused_decoder(model, tokenizer, out_path, atol=atol)
    out_path = Path(out_path)
    layout = KVLayout.from_config(model.config)
    module = CausalLMWithPast(model.eval(), layout).eval()
    vocab = int(model.get_output_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(0)
    b, s, p = EXAMPLE["batch"], EXAMPLE["new"], EXAMPLE["past"]
    past = tuple(torch.randn((b, layout.num_kv_heads, p, layout.head_dim), generator=gen) for _ in layout.past_names())
    # a left-padded row in the example: traced on an all-ones mask, transformers drops the mask
    # (its "no padding" shortcut) and the graph would ignore padding
    mask = torch.ones((b, p + s), dtype=torch.long)
    mask[1, :2] = 0
    example = (
        torch.randint(0, vocab, (b, s), generator=gen),
        mask,
        torch.from_numpy(position_ids(mask.numpy(), s)),
        past,
    )
    dyn = torch.export.Dim.DYNAMIC
    shapes = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, {0: dyn, 1: dyn}, tuple({0: dyn, 2: dyn} for _ in past))
    names = (*FIXED_INPUTS, *layout.past_names())
    start = time.perf_counter()
    # a 0.5 B decoder takes minutes here: tracing, writing the weights, the ONNX Runtime session, each
    # parity step (stderr, like calibration's and validation's bars)
    with export_progress(3 + PARITY["steps"] + 1) as bar:
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                example,
                dynamic_shapes=shapes,
                dynamo=True,
                opset_version=opset,
                input_names=list(names),
                output_names=["logits", *layout.present_names()],
                verbose=False,
            )
        export_step(bar, "traced", start)
        with staged_model(program, out_path, model) as (staged, graph, _large):
            seconds = time.perf_counter() - start
            if tuple(i.name for i in graph.graph.input) != names:
                raise BadInputError(f"exported graph inputs {[i.name for i in graph.graph.input]} differ from {names}")
            save_onnx(graph, staged)
            export_step(bar, "written", start)
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            # writing the graph read every weight of the model: not needed again until parity's PyTorch half
            release_weight_pages()

            def open_session():
                session = ort.InferenceSession(str(staged), opts, providers=["CPUExecutionProvider"])
                export_step(bar, "ONNX Runtime session made", start)
                return session

            reports = _parity_feeds(vocab, layout, open_session, module, atol=atol, path=str(staged), bar=bar)
    worst = max(reports, key=lambda r: r.max_abs_diff)
    log.info(
        "exported %s in %.1fs (parity max |diff| %.2e over a prefill and %d decode steps)",
        out_path,
        seconds,
        worst.max_abs_diff,
        PARITY["steps"],
    )
    return ExportResult(str(out_path), names, "logits", opset, round(seconds, 2), worst)
