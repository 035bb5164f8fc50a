"""Text generation on a KV-cache graph (``export.causal_lm``'s layout) through a runner of the
runtime registry (the bundle's; ONNX Runtime for a bare .onnx file).

One prefill feeds the prompts (left-padded to one length, an empty past), then every decode step
feeds the chosen token of each row and the previous step's ``present`` tensors as the new past.
Greedy by default; ``do_sample`` draws with ``temperature``, ``top_k`` and ``top_p`` (nucleus) from
a seeded generator, so a run is repeatable. A row stops at the tokenizer's end-of-sequence token or
any of ``stop_token_ids``; the loop ends when every row has stopped or ``max_new_tokens`` are made.
``stream=True`` yields the text of one prompt piece by piece as it is generated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from modelpress.errors import BadInputError
from modelpress.export.causal_lm import KVLayout, past_from_present, position_ids


def _pick(logits: np.ndarray, *, do_sample: bool, temperature: float, top_k: int, top_p: float,
          rng: np.random.Generator) -> np.ndarray:
    """The next token of each row from its last-position logits [batch, vocab]."""
    if not do_sample:
        return logits.argmax(-1)
    z = logits.astype(np.float64) / max(temperature, 1e-6)
    if top_k and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if top_p < 1.0:  # the smallest set of most likely tokens whose mass reaches top_p
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, axis=-1)
        keep = np.cumsum(sorted_p, axis=-1) - sorted_p < top_p
        mask = np.zeros_like(p, dtype=bool)
        np.put_along_axis(mask, order, keep, axis=-1)
        p = np.where(mask, p, 0.0)
        p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])


class TextGenerator:
    """A KV-cache graph and its tokenizer; ``generate`` makes text, ``generate_ids`` token ids."""

    def __init__(self, model: Any, tokenizer: Any, *, layout: KVLayout | None = None,
                 threads: int | None = None) -> None:
        """``model``: a runner of the runtime registry (the bundle's) or an ONNX file (opened
        with ONNX Runtime); ``layout``: the cache's (read from the file when not given)."""
        if isinstance(model, (str, Path)):
            from modelpress.fileio import graph_input_shapes
            from modelpress.runtimes.registry import create_runner

            layout = layout or KVLayout.from_shapes(graph_input_shapes(model))
            model = create_runner("onnxruntime", model, threads=threads or 0)
            model.__enter__()
        if layout is None:
            raise BadInputError("TextGenerator: give the cache layout with a runner")
        self.runner = model
        self.layout = layout
        self.tokenizer = tokenizer

    def _stops(self, stop_token_ids: Sequence[int] | None) -> set[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        stops = set(int(t) for t in (stop_token_ids or ()))
        return stops | ({int(eos)} if eos is not None and stop_token_ids is None else set())

    def steps(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, do_sample: bool = False,
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
              stop_token_ids: Sequence[int] | None = None) -> Iterator[np.ndarray]:
        """Per step, the token chosen for each row (-1 for rows that had already stopped)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise BadInputError("generate: every prompt needs at least one token")
        if max_new_tokens < 1:
            raise BadInputError(f"generate: max_new_tokens must be ≥ 1, got {max_new_tokens}")
        pad = getattr(self.tokenizer, "pad_token_id", None)
        pad = int(pad if pad is not None else (getattr(self.tokenizer, "eos_token_id", None) or 0))
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), pad, dtype=np.int64)
        mask = np.zeros((len(prompts), width), dtype=np.int64)
        for r, p in enumerate(prompts):  # left padding: every row's last token is the newest
            ids[r, width - len(p):] = p
            mask[r, width - len(p):] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask, width),
                **self.layout.empty(len(prompts))}
        rng = np.random.default_rng(seed)
        stops = self._stops(stop_token_ids)
        done = np.zeros(len(prompts), dtype=bool)
        for _ in range(max_new_tokens):
            out = self.runner.run(feed)
            token = _pick(out["logits"][:, -1], do_sample=do_sample, temperature=temperature, top_k=top_k,
                          top_p=top_p, rng=rng)
            yield np.where(done, -1, token)
            done |= np.isin(token, list(stops))
            if done.all():
                return
            mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=np.int64)], axis=1)
            feed = {"input_ids": np.where(done, pad, token)[:, None].astype(np.int64), "attention_mask": mask,
                    "position_ids": position_ids(mask, 1), **past_from_present(out)}

    def generate_ids(self, prompts: Sequence[Sequence[int]], **options: Any) -> list[list[int]]:
        """The new token ids of each prompt (a stop token, when one ends the row, included)."""
        out: list[list[int]] = [[] for _ in prompts]
        for tokens in self.steps(prompts, **options):
            for r, t in enumerate(tokens):
                if t >= 0:
                    out[r].append(int(t))
        return out

    def _encode(self, prompt: str, chat: bool) -> list[int]:
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise BadInputError("generate(chat=True): the tokenizer has no chat template")
            return list(self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                           add_generation_prompt=True, tokenize=True))
        return list(self.tokenizer(prompt)["input_ids"])

    def generate(self, prompts: str | Sequence[str], *, max_new_tokens: int = 32, stream: bool = False,
                 chat: bool = False, **options: Any):
        """The generated text of one prompt (a str), of several (a list), or with ``stream=True``
        an iterator of the pieces of one prompt's text as they are generated. ``options``: those
        of :meth:`steps` (``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``seed``,
        ``stop_token_ids``)."""
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        encoded = [self._encode(t, chat) for t in texts]
        if stream:
            if not single:
                raise BadInputError("generate(stream=True) takes one prompt")
            return self._stream(encoded[0], max_new_tokens=max_new_tokens, **options)
        ids = self.generate_ids(encoded, max_new_tokens=max_new_tokens, **options)
        stops = self._stops(options.get("stop_token_ids"))
        outs = [self.tokenizer.decode(row[:-1] if row and row[-1] in stops else row, skip_special_tokens=True)
                for row in ids]
        return outs[0] if single else outs

    def _stream(self, prompt: list[int], **options: Any) -> Iterator[str]:
        made: list[int] = []
        shown = ""
        stops = self._stops(options.get("stop_token_ids"))
        for tokens in self.steps([prompt], **options):
            if tokens[0] < 0 or int(tokens[0]) in stops:
                break
            made.append(int(tokens[0]))
            text = self.tokenizer.decode(made, skip_special_tokens=True)
            if len(text) > len(shown) and not text.endswith("\ufffd"):  # a multi-byte character completes later
                yield text[len(shown):]
                shown = text
