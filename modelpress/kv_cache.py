"""The KV-cache layout of a decoder graph (``export.causal_lm`` writes it; the bundle's generator
and validation feed it): names, shapes and the step-to-step plumbing, in numpy only.

Deploy-side (``modelpress.deploy_side``): no torch or transformers at import time, so a bundle of a
causal LM runs on a host that has only numpy, onnxruntime and tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np

from modelpress.errors import BadInputError

FIXED_INPUTS = ("input_ids", "attention_mask", "position_ids")
#: the fused graph's optional input (transformers' ``logits_to_keep``): logits for only the last k positions
#: of the step (0, its default: all of them); a prefill that needs one token's logits skips the LM head
#: for the rest of the prompt
LOGITS_TO_KEEP = "logits_to_keep"
#: graph metadata: "right" where the graph reads each row's length from the mask and puts new tokens
#: right after it (``export.fused_decoder``: GroupQueryAttention); absent: left padding, positions fed
PADDING_KEY = "modelpress.padding"
#: the families the fused decoder graph is written for (their layers: RMSNorm, rotary, GQA, SiLU-gated MLP)
FUSED_FAMILIES = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True)
class KVLayout:
    """The cache's shape: a key and a value per decoder layer, [batch, kv_heads, length, head_dim]."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> "KVLayout":
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
        heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None)
        if not layers or not heads:
            raise BadInputError(f"{type(config).__name__}: not a decoder config (no layer or head count)")
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        width = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
        head_dim = getattr(text, "head_dim", None) or width // heads
        return cls(int(layers), int(kv_heads), int(head_dim))

    @classmethod
    def from_graph(cls, inputs: Sequence[Any]) -> "KVLayout":
        """The layout from an ONNX Runtime session's inputs (heads and head_dim are static there)."""
        past = [i for i in inputs if i.name.startswith("past_key_values.")]
        if not past or len(past) % 2:
            raise BadInputError("the graph has no past_key_values.* inputs: not a KV-cache export")
        shape = past[0].shape
        return cls(len(past) // 2, int(shape[1]), int(shape[3]))

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[Any]]) -> "KVLayout":
        """The layout from a graph's input shapes (name → dims; ``fileio.graph_input_shapes``)."""
        return cls.from_graph([SimpleNamespace(name=k, shape=tuple(v)) for k, v in shapes.items()])

    def past_names(self) -> tuple[str, ...]:
        return tuple(f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value"))

    def present_names(self) -> tuple[str, ...]:
        return tuple(f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value"))

    def empty(self, batch: int, dtype=np.float32) -> dict[str, np.ndarray]:
        """An empty past (length 0) for a prefill of ``batch`` sequences."""
        return {name: np.zeros((batch, self.num_kv_heads, 0, self.head_dim), dtype=dtype) for name in self.past_names()}


def past_from_present(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A step's ``present.*`` outputs as the next step's ``past_key_values.*`` inputs, by name: each
    model's own cache (the PyTorch teacher's layout may differ from the student graph's)."""
    return {"past_key_values." + k[len("present.") :]: v for k, v in outputs.items() if k.startswith("present.")}


def position_ids(attention_mask: np.ndarray, new: int) -> np.ndarray:
    """Positions of the last ``new`` tokens: count of real tokens before each (left padding gets 0)."""
    positions = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0)
    return positions[:, -new:].astype(np.int64)


def fused_graph_unsupported(config: Any) -> str | None:
    """Why ``config`` cannot take the fused decoder graph (``export.fused_decoder``; None: it can)."""
    kind = getattr(config, "model_type", "")
    if kind not in FUSED_FAMILIES:
        return f"model_type {kind!r} (the fused decoder graph covers {', '.join(FUSED_FAMILIES)})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} (the fused graph's MLP is SiLU-gated)"
    layout = KVLayout.from_config(config)
    if layout.head_dim % 16:
        return f"head size {layout.head_dim} (GroupQueryAttention takes multiples of 16)"
    if getattr(config, "mlp_bias", False):
        return "mlp_bias"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "a sliding attention window"
    return None
