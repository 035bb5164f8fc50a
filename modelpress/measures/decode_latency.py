"""Decode latency of KV-cache graphs (text-generation): ms per new token at a given context.

For each (batch, context) of ``validate.batch_sizes`` × ``task_options.decode_contexts``, every
predictor prefills ``context`` tokens once (untimed), then one decode step — one new token per row
on that past — is timed again and again, interleaved round by round across the predictors as the
prefill latency is (``validate.compare``). The step is always the same (the same past), so every
timed run costs exactly one step at that context (a fused graph's step writes its cache in place:
``Runner.kv_cache``). Rows hold the step's percentiles and
``tokens_per_s`` = batch ÷ the median step.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from modelpress.kv_cache import past_from_present
from modelpress.measures.latency import interleaved_rounds, summarize


def _step_feed(predictor, tokens: np.ndarray, batch: int, context: int) -> dict[str, np.ndarray]:
    """The decode step after an (untimed) prefill of ``context`` tokens, for ``batch`` rows."""
    layout = predictor.encoder.layout
    ids = np.resize(tokens, context)[None].repeat(batch, 0).astype(np.int64)
    mask = np.ones((batch, context), dtype=np.int64)
    prefill = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": np.arange(context, dtype=np.int64)[None].repeat(batch, 0),
        **layout.empty(batch),
    }
    out = predictor.runner.run(prefill)
    nxt = out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
    return {
        "input_ids": nxt,
        "attention_mask": np.ones((batch, context + 1), dtype=np.int64),
        "position_ids": np.full((batch, 1), context, dtype=np.int64),
        **past_from_present(out),
    }


def _timed_step(predictor, tokens: np.ndarray, batch: int, context: int) -> Callable[[], Any]:
    """The decode step to time: on a fused graph (``Runner.kv_cache``) the step of the in-place cache,
    writing at position ``context`` again each run (the same cost every time, as a generator's step);
    otherwise the traced graph's step on the fed past."""
    layout = predictor.encoder.layout
    cache = predictor.runner.kv_cache(layout, batch, context + 1)
    if cache is None:
        feed = _step_feed(predictor, tokens, batch, context)
        return lambda: predictor.runner.run(feed)
    ids = np.resize(tokens, context)[None].repeat(batch, 0).astype(np.int64)
    logits = cache.run(ids, np.ones((batch, context), dtype=np.int64))
    nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
    mask = np.ones((batch, context + 1), dtype=np.int64)
    return lambda: cache.run(nxt, mask)


def decode_latency(
    predictors: Sequence[Any], examples: Sequence[Any], cfg, *, contexts: Sequence[int]
) -> dict[str, list[dict[str, Any]]]:
    """Per predictor, a row per (batch of ``cfg.batch_sizes``, context of ``contexts``): the decode
    step's latency and tokens/s."""
    tokens = np.asarray(getattr(examples[0], "ids", examples[0]), dtype=np.int64)
    rows: dict[str, list[dict[str, Any]]] = {p.name: [] for p in predictors}
    for b in cfg.batch_sizes:
        for context in contexts:
            times = interleaved_rounds([_timed_step(p, tokens, b, context) for p in predictors], cfg)
            for p, t in zip(predictors, times):
                row = summarize(t, batch_size=b, seq_len=1).to_dict()
                del row["seq_len"], row["throughput_per_s"]
                rows[p.name].append(
                    {"batch_size": b, "context": context, **row, "tokens_per_s": round(b / (row["p50_ms"] / 1e3), 2)}
                )
    return rows
