"""Text generation on a KV-cache graph (``export.causal_lm``'s layout) through a runner of the
runtime registry (the bundle's; ONNX Runtime for a bare .onnx file).

One prefill feeds the prompts (left-padded to one length, an empty past), then every decode step
feeds the chosen token of each row and the previous step's ``present`` tensors as the new past.
Greedy by default; ``do_sample`` draws with ``temperature``, ``top_k`` and ``top_p`` (nucleus) from
a seeded generator, so a run is repeatable. A row stops at the tokenizer's end-of-sequence token or
any of ``stop_token_ids``; the loop ends when every row has stopped or ``max_new_tokens`` are made.
``stream=True`` yields the text of one prompt piece by piece as it is generated.

A prompt and its new tokens must fit the model's positions (``max_positions``: a prompt of P
tokens and N new ones take P + N − 1): a longer prompt is refused, or with ``truncate=True`` cut
to its last tokens; a ``max_new_tokens`` that does not fit is refused, while the default (32) is
cut to what fits. Options out of range (``top_p`` outside (0, 1], ``temperature`` ≤ 0, ...) are
refused before anything runs.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from modelpress.errors import BadInputError
from modelpress.kv_cache import PADDING_KEY, KVLayout, past_from_present, position_ids
from modelpress.fileio import graph_input_shapes
from modelpress.runtimes.registry import create_runner

#: new tokens per prompt when ``max_new_tokens`` is not given (cut to what the positions leave)
DEFAULT_NEW_TOKENS = 32
#: the sampling options of :meth:`TextGenerator.steps` and their defaults
_OPTION_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}


def _integer(name: str, value: Any, *, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"generate: {name} must be an integer, got {type(value).__name__} {value!r}")
    if value < least:
        raise BadInputError(f"generate: {name} must be ≥ {least}, got {value}")
    return int(value)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"generate: {name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise BadInputError(f"generate: {name} must be finite, got {value}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"generate: {name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _token_ids(name: str, value: Any) -> list[int] | None:
    """``value`` as a list of token ids (None stays None); anything else is a TypeError naming
    ``name``, not int()'s own error (a string's characters would be read as ids)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, numbers.Number)) or not hasattr(value, "__iter__"):
        raise TypeError(f"generate: {name} must be a list of token ids, got {type(value).__name__} {value!r:.40}")
    ids = list(value)
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise TypeError(f"generate: {name}[{i}] must be a token id (an integer), got {type(t).__name__} {t!r:.40}")
        if t < 0:
            raise BadInputError(f"generate: {name}[{i}] must be ≥ 0, got {t}")
    return [int(t) for t in ids]


def check_options(*, do_sample: bool, temperature: float, top_k: int, top_p: float, seed: int) -> None:
    """Refuse sampling options a draw cannot use (one line naming the option), before anything runs:
    ``top_p=0`` keeps no token at all, ``temperature=0`` divides by zero."""
    if not isinstance(do_sample, bool):
        raise TypeError(f"generate: do_sample must be True or False, got {type(do_sample).__name__} {do_sample!r}")
    if not _number("temperature", temperature) > 0:
        raise BadInputError(
            f"generate: temperature must be > 0, got {temperature} (greedy decoding is do_sample=False, the default)"
        )
    _integer("top_k", top_k, least=0)
    if not 0 < _number("top_p", top_p) <= 1:
        raise BadInputError(f"generate: top_p must be in (0, 1], got {top_p} (1 keeps every token)")
    _integer("seed", seed, least=0)


def _pick(
    logits: np.ndarray, *, do_sample: bool, temperature: float, top_k: int, top_p: float, rng: np.random.Generator
) -> np.ndarray:
    """The next token of each row from its last-position logits [batch, vocab]."""
    if not do_sample:
        return logits.argmax(-1)
    z = logits.astype(np.float64) / temperature  # > 0: check_options
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


def prompt_list(prompts: Any) -> list[str]:
    """One prompt (a str) or a sequence of them; anything else is a TypeError naming the argument
    (the tokenizer's own would not say which)."""
    if isinstance(prompts, str):
        return [prompts]
    if prompts is None or isinstance(prompts, (bytes, numbers.Number)) or not hasattr(prompts, "__iter__"):
        raise TypeError(f"generate: prompts must be a string or a list of strings, got {type(prompts).__name__}")
    texts = list(prompts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"generate: prompts[{i}] must be a string, got {type(t).__name__} {t!r:.40}")
    return texts


class _LeftPadded:
    """A traced graph's decode (``export.causal_lm``): prompts left-padded to one width (every row's
    newest token last), positions fed, each step's ``present`` fed back as the next past."""

    def __init__(self, runner: Any, layout: KVLayout, prompts: Sequence[Sequence[int]], pad: int, new: int) -> None:
        self.runner, self.pad = runner, pad
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), pad, dtype=np.int64)
        self.mask = np.zeros((len(prompts), width), dtype=np.int64)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = p
            self.mask[r, width - len(p) :] = 1
        self.feed = {
            "input_ids": ids,
            "attention_mask": self.mask,
            "position_ids": position_ids(self.mask, width),
            **layout.empty(len(prompts)),
        }

    def start(self) -> np.ndarray:
        """The prompts' next-token logits [batch, vocab]."""
        self.out = self.runner.run(self.feed)
        return self.out["logits"][:, -1]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """``tokens`` [batch] appended; their next-token logits."""
        self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), dtype=np.int64)], axis=1)
        feed = {
            "input_ids": tokens[:, None],
            "attention_mask": self.mask,
            "position_ids": position_ids(self.mask, 1),
            **past_from_present(self.out),
        }
        self.out = self.runner.run(feed)
        return self.out["logits"][:, -1]


class _RightPadded:
    """A fused graph's decode (``export.fused_decoder``): prompts right-padded, each row's length
    read from its mask (its length in ones, then zeros), the new token of a row placed right after
    it. With the runner's in-place cache (``Runner.kv_cache``) the past and present share one
    buffer of the prompt + new tokens' length, written in place; otherwise ``present`` is fed back."""

    def __init__(self, runner: Any, layout: KVLayout, prompts: Sequence[Sequence[int]], pad: int, new: int) -> None:
        self.runner, self.layout = runner, layout
        self.lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        width = int(self.lengths.max())
        self.ids = np.full((len(prompts), width), pad, dtype=np.int64)
        for r, p in enumerate(prompts):
            self.ids[r, : len(p)] = p
        self.width = width
        self.cache = runner.kv_cache(layout, len(prompts), width + new)
        self.past = layout.empty(len(prompts))

    def _mask(self) -> np.ndarray:
        return (np.arange(self.width)[None] < self.lengths[:, None]).astype(np.int64)

    def _run(self, ids: np.ndarray, keep: int = 0) -> np.ndarray:
        """The logits of the step's last ``keep`` positions (0: all) — or of all of them, where the
        graph or the runtime cannot keep fewer (``logits_to_keep``: the in-place cache's runs)."""
        if self.cache is not None:
            return self.cache.run(ids, self._mask(), keep)
        feed = {"input_ids": ids, "attention_mask": self._mask(), "position_ids": np.zeros_like(ids), **self.past}
        out = self.runner.run(feed)
        self.past = past_from_present(out)
        return out["logits"]

    def start(self) -> np.ndarray:
        # the LM head on the positions from the shortest prompt's last token on: every row's is among them
        logits = self._run(self.ids, self.width - int(self.lengths.min()) + 1)
        first = self.width - logits.shape[1]  # the position of the logits' first row
        return logits[np.arange(len(self.lengths)), self.lengths - 1 - first]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.lengths += 1
        self.width += 1
        return self._run(tokens[:, None])[:, 0]


class TextGenerator:
    """A KV-cache graph and its tokenizer; ``generate`` makes text, ``generate_ids`` token ids."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        layout: KVLayout | None = None,
        threads: int | None = None,
        max_positions: int | None = None,
    ) -> None:
        """``model``: a runner of the runtime registry (the bundle's) or an ONNX file (opened
        with ONNX Runtime); ``layout``: the cache's (read from the file when not given);
        ``max_positions``: the positions the model takes (None: not checked)."""
        if isinstance(model, (str, Path)):
            layout = layout or KVLayout.from_shapes(graph_input_shapes(model))
            model = create_runner("onnxruntime", model, threads=threads or 0, spin=True)  # a decode loop's runs
            model.__enter__()
        if layout is None:
            raise BadInputError("TextGenerator: give the cache layout with a runner")
        self.runner = model
        self.layout = layout
        self.tokenizer = tokenizer
        self.max_positions = max_positions

    def _stops(self, stop_token_ids: Sequence[int] | None) -> set[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        stops = set(_token_ids("stop_token_ids", stop_token_ids) or ())
        return stops | ({int(eos)} if eos is not None and stop_token_ids is None else set())

    def steps(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_token_ids: Sequence[int] | None = None,
    ) -> Iterator[np.ndarray]:
        """Per step, the token chosen for each row (-1 for rows that had already stopped)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise BadInputError("generate: every prompt needs at least one token")
        _integer("max_new_tokens", max_new_tokens, least=1)
        check_options(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        longest = max(len(p) for p in prompts)
        if self.max_positions is not None and longest + max_new_tokens - 1 > self.max_positions:
            raise BadInputError(
                f"generate: a {longest}-token prompt and max_new_tokens={max_new_tokens} take "
                f"{longest + max_new_tokens - 1} positions, more than the {self.max_positions} "
                f"the model takes"
            )
        pad = getattr(self.tokenizer, "pad_token_id", None)
        pad = int(pad if pad is not None else (getattr(self.tokenizer, "eos_token_id", None) or 0))
        right = self.runner.metadata.get(PADDING_KEY) == "right"
        decoder = (_RightPadded if right else _LeftPadded)(self.runner, self.layout, prompts, pad, max_new_tokens)
        rng = np.random.default_rng(seed)
        stops = self._stops(stop_token_ids)
        done = np.zeros(len(prompts), dtype=bool)
        logits = decoder.start()
        token = np.zeros(len(prompts), dtype=np.int64)
        for step in range(max_new_tokens):
            if step:
                logits = decoder.step(np.where(done, pad, token).astype(np.int64))
            token = _pick(logits, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
            yield np.where(done, -1, token)
            done |= np.isin(token, list(stops))
            if done.all():
                return

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
            return list(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
                )
            )
        return list(self.tokenizer(prompt)["input_ids"])

    def _fit(self, encoded: list[list[int]], max_new_tokens: int | None, truncate: bool) -> tuple[list[list[int]], int]:
        """(the prompts, the new tokens) that fit the positions: a prompt longer than them is refused
        (``truncate``: cut to its last tokens, leaving room for the new ones); a ``max_new_tokens``
        the user gave that does not fit is refused, the default is cut to what fits."""
        given = max_new_tokens is not None
        new = _integer("max_new_tokens", max_new_tokens, least=1) if given else DEFAULT_NEW_TOKENS
        limit = self.max_positions
        if limit is None:
            return encoded, new
        longest = max(len(p) for p in encoded)
        if truncate:
            if given and new > limit:
                raise BadInputError(
                    f"generate: max_new_tokens={new} is more than the {limit} positions the model takes"
                )
            if not given:  # the default keeps at least half the positions for the prompt's end
                new = min(new, max(limit - longest + 1, limit // 2, 1))
            keep = limit - new + 1
            return [p[-keep:] for p in encoded], new
        for i, p in enumerate(encoded):
            if len(p) > limit:
                which = "the prompt" if len(encoded) == 1 else f"prompt {i}"
                raise BadInputError(
                    f"generate: {which} is {len(p)} tokens, more than the {limit} positions the "
                    "model takes (truncate=True keeps its last tokens)"
                )
        room = limit - longest + 1  # a P-token prompt and N new tokens take P + N - 1 positions
        if given and new > room:
            raise BadInputError(
                f"generate: max_new_tokens={new} does not fit: a {longest}-token prompt leaves "
                f"room for {room} new tokens in the {limit} positions the model takes"
            )
        return encoded, min(new, room)

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int | None = None,
        stream: bool = False,
        chat: bool = False,
        truncate: bool = False,
        **options: Any,
    ):
        """The generated text of one prompt (a str), of several (a list; none: an empty list), or
        with ``stream=True`` an iterator of the pieces of one prompt's text as they are generated.
        ``max_new_tokens``: at most that many (default 32, cut to what the positions leave);
        ``truncate``: a prompt longer than the positions keeps its last tokens instead of being
        refused. ``options``: those of :meth:`steps` (``do_sample``, ``temperature``, ``top_k``,
        ``top_p``, ``seed``, ``stop_token_ids``)."""
        single = isinstance(prompts, str)
        texts = prompt_list(prompts)
        stream, chat, truncate = _flag("stream", stream), _flag("chat", chat), _flag("truncate", truncate)
        _token_ids("stop_token_ids", options.get("stop_token_ids"))  # at the call, not at a stream's first piece
        if not texts:
            if stream:
                raise BadInputError("generate(stream=True) takes one prompt")
            return []
        unknown = sorted(set(options) - {*_OPTION_DEFAULTS, "stop_token_ids"})
        if unknown:
            raise TypeError(
                f"generate: unknown option {unknown[0]!r} (options: {', '.join(_OPTION_DEFAULTS)}, stop_token_ids)"
            )
        check_options(**{**_OPTION_DEFAULTS, **{k: v for k, v in options.items() if k != "stop_token_ids"}})
        encoded, max_new_tokens = self._fit([self._encode(t, chat) for t in texts], max_new_tokens, truncate)
        if stream:
            if not single:
                raise BadInputError("generate(stream=True) takes one prompt")
            return self._stream(encoded[0], max_new_tokens=max_new_tokens, **options)
        ids = self.generate_ids(encoded, max_new_tokens=max_new_tokens, **options)
        stops = self._stops(options.get("stop_token_ids"))
        outs = [
            self.tokenizer.decode(row[:-1] if row and row[-1] in stops else row, skip_special_tokens=True)
            for row in ids
        ]
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
                yield text[len(shown) :]
                shown = text
