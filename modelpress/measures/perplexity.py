"""Language-model metrics on held-out text, for text-generation: perplexity by a strided sliding
window (the transformers "perplexity of fixed-length models" recipe), and, between a candidate and
the fp32 teacher on the same windows, next-token top-1 agreement and mean KL(teacher ‖ candidate).

The text is tokenized once into one stream. Windows of ``max_length`` tokens start every
``stride`` tokens; each window scores only the tokens the previous one did not (its last
``end - previous_end`` positions), so every token after the first is scored once, with up to
``max_length - stride`` tokens of context. A window is run through a scorer: a callable from
``input_ids`` [1, n] to logits [1, n, vocab] — the PyTorch model, or an ONNX KV-cache graph
prefilled on an empty past (:func:`onnx_scorer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from modelpress.errors import BadInputError

Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Window:
    ids: np.ndarray  # [n] token ids of the window
    scored: int  # the last ``scored`` next-token predictions count (targets ids[-scored:])


def windows(stream: Sequence[int], *, max_length: int, stride: int) -> Iterator[Window]:
    """The strided windows over ``stream`` (see the module docstring)."""
    if not 0 < stride <= max_length:
        raise BadInputError(f"perplexity: stride must be in 1..max_length ({max_length}), got {stride}")
    ids = np.asarray(stream, dtype=np.int64)
    if len(ids) < 2:
        raise BadInputError("perplexity: the eval text has fewer than 2 tokens")
    previous_end = 1  # the first token is never a target
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + max_length, len(ids))
        if end <= previous_end:
            continue
        # at most n - 1: with stride == max_length the token at a window's start has no context in it
        yield Window(ids[begin:end], min(end - previous_end, end - begin - 1))
        previous_end = end
        if end == len(ids):
            return


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def perplexity(score: Scorer, stream: Sequence[int], *, max_length: int, stride: int) -> float:
    """exp(mean negative log-likelihood) of every scored token of ``stream``."""
    nll, count = 0.0, 0
    for w in windows(stream, max_length=max_length, stride=stride):
        logp = _log_softmax(score(w.ids[None])[0, :-1])  # position t predicts ids[t + 1]
        targets = w.ids[1:]
        picked = logp[np.arange(len(targets)), targets][-w.scored :]
        nll -= float(picked.sum())
        count += len(picked)
    return math.exp(nll / count)


@dataclass(frozen=True)
class NextTokenFidelity:
    top1_agreement: float  # share of scored positions where both predict the same next token
    mean_kl: float  # mean KL(teacher ‖ candidate) of the next-token distributions
    positions: int


def next_token_fidelity(
    teacher: Scorer, candidate: Scorer, stream: Sequence[int], *, max_length: int, stride: int
) -> NextTokenFidelity:
    """Top-1 agreement and mean KL of ``candidate``'s next-token distributions against ``teacher``'s."""
    same, kl, count = 0, 0.0, 0
    for w in windows(stream, max_length=max_length, stride=stride):
        lt = _log_softmax(teacher(w.ids[None])[0, :-1][-w.scored :])
        lc = _log_softmax(candidate(w.ids[None])[0, :-1][-w.scored :])
        same += int((lt.argmax(-1) == lc.argmax(-1)).sum())
        kl += float((np.exp(lt) * (lt - lc)).sum())
        count += len(lt)
    return NextTokenFidelity(same / count, kl / count, count)


def onnx_scorer(session, layout) -> Scorer:
    """A KV-cache graph (``export.causal_lm``) as a scorer: one prefill of the window, empty past."""

    def score(ids: np.ndarray) -> np.ndarray:
        mask = np.ones_like(ids)
        feed = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None].repeat(len(ids), 0),
            **layout.empty(len(ids)),
        }
        return session.run(["logits"], feed)[0]

    return score


def torch_scorer(model) -> Scorer:
    """A transformers causal LM as a scorer."""
    import torch

    def score(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(ids)).logits.float().numpy()

    return score


# -- per-window results of the eval set (text-generation's Predictor output) -------------------------
@dataclass(frozen=True)
class ScoredWindow:
    """One window's scored next-token predictions: what the text-generation task's post-processing
    keeps per window, for the teacher and each candidate alike."""

    nll: np.ndarray  # [scored] float32: −log p(actual next token)
    top1: np.ndarray  # [scored] int32: the most likely next token
    #: [scored, vocab] float16: the whole next-token distribution, for KL (2 bytes per token per vocabulary
    #: entry; the rounding moves mean KL by ~0.1 % of itself). None once :func:`against_teacher` has
    #: reduced a candidate's window to its KL sum: only the teacher keeps its distributions (issue #24: at a
    #: 151,936-token vocabulary they are ~300 MB a model)
    logprobs: np.ndarray | None
    kl: float | None = None  # sum over the scored tokens of KL(teacher ‖ this), once reduced


def _kl_sum(t: ScoredWindow, c: ScoredWindow) -> float:
    if c.logprobs is None:
        if c.kl is None:
            raise ValueError("a reduced window without its KL sum")
        return c.kl
    if t.logprobs is None:
        raise ValueError("the teacher's window was reduced: its distributions are gone")
    lt, lc = t.logprobs.astype(np.float32), c.logprobs.astype(np.float32)
    return float((np.exp(lt) * (lt - lc)).sum(dtype=np.float64))


def against_teacher(teacher: Sequence[ScoredWindow], candidate: Sequence[ScoredWindow]) -> tuple[ScoredWindow, ...]:
    """``candidate``'s windows with their distributions replaced by the KL(teacher ‖ candidate) sums
    :func:`window_sums` would compute from them (the same numbers), so that a candidate's outputs cost
    a few bytes per token instead of a vocabulary's worth."""
    return tuple(
        c if c is t else ScoredWindow(c.nll, c.top1, None, _kl_sum(t, c))
        for t, c in zip(teacher, candidate, strict=True)
    )


def score_window(logits: np.ndarray, ids: np.ndarray, positions: np.ndarray) -> ScoredWindow:
    """The ``ScoredWindow`` of one row: ``logits`` [n, vocab], ``ids`` [n], ``positions`` the
    scored positions (position t predicts ids[t + 1])."""
    logp = _log_softmax(logits[positions])
    targets = ids[positions + 1]
    return ScoredWindow(
        -logp[np.arange(len(positions)), targets].astype(np.float32),
        logits[positions].argmax(-1).astype(np.int32),
        logp.astype(np.float16),
    )


def window_sums(
    teacher: Sequence[ScoredWindow], candidate: Sequence[ScoredWindow], *, kl: bool = True
) -> dict[str, np.ndarray]:
    """Per window: scored tokens, NLL sums of both, next-token agreements and (``kl``: the one
    pass over the whole distributions) the KL(teacher ‖ candidate) sum."""
    n, nll_t, nll_c, same, kls = [], [], [], [], []
    for t, c in zip(teacher, candidate, strict=True):
        n.append(len(t.nll))
        nll_t.append(float(t.nll.sum(dtype=np.float64)))
        nll_c.append(float(c.nll.sum(dtype=np.float64)))
        same.append(int((t.top1 == c.top1).sum()))
        # not asked, or the teacher against itself (its reference values)
        kls.append(0.0 if not kl or c is t else _kl_sum(t, c))
    return {
        k: np.asarray(v, dtype=np.float64)
        for k, v in {"n": n, "nll_t": nll_t, "nll_c": nll_c, "same": same, "kl": kls}.items()
    }


def lm_metrics(sums: Mapping[str, np.ndarray], *, reference: bool = False) -> dict[str, float]:
    """Perplexity, its ratio to the teacher's, next-token agreement and mean KL from ``window_sums``
    (``reference``: the teacher's own values)."""
    total = sums["n"].sum()
    ppl_t = math.exp(sums["nll_t"].sum() / total)
    if reference:
        return {"perplexity": ppl_t, "perplexity_ratio": 1.0, "next_token_agreement": 1.0, "mean_kl": 0.0}
    ppl_c = math.exp(sums["nll_c"].sum() / total)
    return {
        "perplexity": ppl_c,
        "perplexity_ratio": ppl_c / ppl_t,
        "next_token_agreement": float(sums["same"].sum() / total),
        "mean_kl": float(sums["kl"].sum() / total),
    }
