"""The modality registry: how raw examples of one kind (text, images) become model inputs.

A modality knows its preprocessor (a tokenizer, an image processor), how a batch of raw examples
becomes a feed of numpy arrays, the dummy inputs and dynamic axes for export, which positions of a
feed are real for calibration statistics (padding is not), and the shape profiles engines need.
Tasks name their modality; nothing else asks what kind of input a model takes.

Adding a modality is one module that subclasses :class:`Modality` and registers an instance:
``MODALITIES.register("image", "modelpress.modalities.image:IMAGE")
MODALITIES.register("causal-text", "modelpress.modalities.causal_text:CAUSAL_TEXT")``. A variant of a
registered modality registers itself in that modality's module (``text-pairs`` in ``text.py``).
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from modelpress.errors import BadInputError
from modelpress.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """One encoded batch: the model feed. A modality whose tasks need more to map outputs back to
    the examples (each word's first token, the scored positions) subclasses it: the payload a task
    declares (``Task.batch_payload``)."""

    feed: Mapping[str, np.ndarray]
    size: int = field(default=0)

    def __post_init__(self) -> None:
        if not self.size:
            object.__setattr__(self, "size", len(next(iter(self.feed.values()))))


class Encoder(abc.ABC):
    """Turns raw examples into batches for one model (its input names, its length limit)."""

    input_names: tuple[str, ...]

    @abc.abstractmethod
    def encode(self, examples: Sequence[Any], *, pad_to: int | None = None) -> Batch:
        """A batch of ``examples``; ``pad_to`` pads (and truncates) to that many positions."""

    def lengths(self, examples: Sequence[Any]) -> list[int]:
        """A size per example, for grouping similar ones into a batch (less padding)."""
        return [0] * len(examples)

    def timing_lengths(self, seq_lengths: Sequence[int]) -> tuple[int | None, ...]:
        """The padded lengths latency is timed at (``validate.seq_lengths``; None: no padding)."""
        return tuple(seq_lengths)

    def length_of(self, feed: Mapping[str, np.ndarray]) -> int:
        """The length a latency row reports for a feed (text: positions)."""
        return int(next(iter(feed.values())).shape[1])


class Modality(abc.ABC):
    name: str
    #: the bundle folder holding the preprocessor
    preprocessor_dir: str
    #: the ``[calibration]`` / ``[validate]`` key naming the field of structured files that holds an example
    field_key: str = "text_field"

    @abc.abstractmethod
    def load_preprocessor(self, ref: str, *, trust_remote_code: bool = False) -> Any:
        """The preprocessor of a model folder or hub id."""

    def load_deployed(self, folder: str | Path) -> Any:
        """The preprocessor a bundle saved in ``folder``, as the bundle runs it on a deployment host:
        without torch or transformers (``modelpress.deploy_side``); by default :meth:`load_preprocessor`."""
        return self.load_preprocessor(str(folder))

    @abc.abstractmethod
    def load_examples(self, path: str | Path, *, field: str, num_samples: int | None, seed: int = 0) -> list[Any]:
        """Raw examples from a data file or folder (calibration, distillation corpora), a
        deterministic sample of ``num_samples`` (None: all)."""

    def read_calibration(self, cal: Any, *, seed: int | None = None) -> list[Any]:
        """The raw examples of a ``[calibration]`` section (``seed``: another sample than its own)."""
        return self.load_examples(
            cal.data,
            field=getattr(cal, self.field_key),
            num_samples=cal.num_samples,
            seed=cal.seed if seed is None else seed,
        )

    def calibration_set(
        self, cal: Any, preprocessor: Any, *, seed: int | None = None, examples: Sequence[Any] | None = None
    ) -> Sequence[Any]:
        """What calibration encodes for a ``[calibration]`` section: :meth:`read_calibration`
        (unless ``examples`` were read already), then :meth:`calibration_examples`."""
        seed = cal.seed if seed is None else seed
        raw = self.read_calibration(cal, seed=seed) if examples is None else examples
        return self.calibration_examples(
            raw, preprocessor, max_length=cal.max_length, num_samples=cal.num_samples, seed=seed
        )

    def calibration_examples(
        self, examples: Sequence[Any], preprocessor: Any, *, max_length: int, num_samples: int, seed: int = 0
    ) -> Sequence[Any]:
        """What calibration encodes, from :meth:`load_examples`' examples once the preprocessor is
        loaded (text-generation packs its text into token sequences here); by default the examples."""
        return examples

    def save_preprocessor(self, preprocessor: Any, folder: Path) -> None:
        preprocessor.save_pretrained(str(folder))

    #: what distillation trains on for this modality: the name of its corpus builder in the distill stage's
    #: registry (``modelpress.distill.corpora``: the ``[distill]`` data, with gold labels when ``label_field``
    #: names them, prepared with the teacher's preprocessor)
    corpus: str

    @abc.abstractmethod
    def model_inputs(self, model: Any, preprocessor: Any) -> tuple[str, ...]:
        """The graph's input names, in the order export fixes them."""

    def check_graph_inputs(self, names: Sequence[str], *, source: object = "") -> tuple[str, ...]:
        """The inputs of a graph this modality can feed, or BadInputError (a model of another kind)."""
        return tuple(names)

    @abc.abstractmethod
    def encoder(
        self,
        preprocessor: Any,
        *,
        input_names: Sequence[str],
        max_length: int,
        input_shapes: Mapping[str, Sequence[Any]] | None = None,
    ) -> Encoder:
        """An encoder for one model's inputs; ``input_shapes`` (name → static dims, None where
        dynamic) for modalities whose feeds need them (a KV cache's head count)."""

    @abc.abstractmethod
    def export_examples(self, preprocessor: Any, input_names: Sequence[str]) -> tuple[dict, dict]:
        """(trace example, parity check batch) as torch tensors; the parity batch differs from the
        example in every dynamic dimension, so a baked-in shape fails the check."""

    @abc.abstractmethod
    def dynamic_shapes(self, input_names: Sequence[str]) -> dict[str, dict[int, Any]]:
        """``torch.export`` dynamic dimensions per input."""

    def real_positions(self, feed: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """A [batch, positions] mask of the feed's real positions (padding is 0), or None."""
        return None

    @abc.abstractmethod
    def engine_profile(self, input_names: Sequence[str], cfg: Any) -> dict[str, dict[str, tuple[int, ...]]]:
        """A TensorRT optimization profile ``{input: {"min"|"opt"|"max": shape}}``."""

    def position_limit(self, model_config: Any, preprocessor: Any = None) -> int | None:
        """The longest input the model can take (positions), or None when it has no limit."""
        return None

    def check_lengths(self, model_config: Any, preprocessor: Any, lengths: Mapping[str, int]) -> int | None:
        """Refuse (BadInputError naming the recipe key) any length the model cannot run: a bundle
        that says 100000 would crash on the first input longer than the model's positions.
        Returns the limit."""
        return self.fit_lengths(model_config, preprocessor, {k: Length(v) for k, v in lengths.items()}).limit

    def fit_lengths(self, model_config: Any, preprocessor: Any, lengths: Mapping[str, "Length"]) -> "Fitted":
        """Each length fitted to the model's positions: one the user wrote that does not fit is
        refused (BadInputError naming its key), a default that does not fit is clipped to the
        positions, with one log line for all of them (the user never asked for that length)."""
        limit = self.position_limit(model_config, preprocessor)
        if limit is None:
            return Fitted(None, {k: n.value for k, n in lengths.items()}, {})
        values, clipped = {}, {}
        for key, length in lengths.items():
            values[key] = length.value
            if length.need > limit:
                if length.written:
                    raise BadInputError(f"{key}: {length.need} is more than the {limit} positions the model takes")
                values[key] = length.fitted(limit, key)
                clipped[key] = {"default": _plain_length(length.value), "used": _plain_length(values[key])}
        if clipped:
            log.info(
                "defaults fitted to the %d positions the model takes: %s",
                limit,
                "; ".join(f"{k} {c['default']} -> {c['used']}" for k, c in clipped.items()),
            )
        return Fitted(limit, values, clipped)


@dataclass(frozen=True)
class Length:
    """A recipe value the model must take: one length or several (``value``), each needing
    ``extra`` positions beyond itself (a decode step at context c feeds c + 1). ``written``: the
    user wrote it (refused when too long); else it is a default (clipped to fit)."""

    value: int | tuple[int, ...]
    extra: int = 0
    written: bool = True

    @property
    def need(self) -> int:
        """The positions its longest value takes."""
        return max(_as_tuple(self.value)) + self.extra

    def fitted(self, limit: int, key: str) -> int | tuple[int, ...]:
        """The value with each length cut to what ``limit`` positions take (repeats dropped)."""
        most = limit - self.extra
        if most < 1:
            raise BadInputError(f"{key}: the model takes only {limit} positions")
        if isinstance(self.value, int):
            return min(self.value, most)
        return tuple(dict.fromkeys(min(v, most) for v in self.value))


@dataclass(frozen=True)
class Fitted:
    """What :meth:`Modality.fit_lengths` made: the limit (None: the model has none), the value used
    for each key, and ``{key: {"default": ..., "used": ...}}`` of the defaults it clipped."""

    limit: int | None
    values: Mapping[str, Any]
    clipped: Mapping[str, Mapping[str, Any]]


def _as_tuple(value: int | Sequence[int]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


def _plain_length(value: int | Sequence[int]) -> int | list[int]:
    """As the report (JSON) writes it."""
    return value if isinstance(value, int) else list(value)


MODALITIES: Registry[Modality] = Registry("modality")
MODALITIES.register("text", "modelpress.modalities.text:TEXT")
MODALITIES.register("image", "modelpress.modalities.image:IMAGE")
MODALITIES.register("causal-text", "modelpress.modalities.causal_text:CAUSAL_TEXT")


def get_modality(name: str) -> Modality:
    return MODALITIES.get(name)
