"""Text generation's model in torch with its graph's interface: what the export traces
(``modelpress.export.causal_lm``) and what validation's PyTorch runner calls (``TextGeneration.torch_module``).

The pressing side only (torch, transformers): the text-generation task imports it where it is used.
"""

from __future__ import annotations

import inspect

import torch

from modelpress.kv_cache import FIXED_INPUTS, KVLayout
from transformers import DynamicCache


class CausalLMWithPast(torch.nn.Module):
    """Flat tensors in, flat tensors out: what ``torch.onnx.export`` can trace."""

    def __init__(self, model: torch.nn.Module, layout: KVLayout) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        # transformers 5.2x renames ``past_key_values`` to ``cache`` (the old name warns)
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(self, input_ids, attention_mask, position_ids, past):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layout.num_layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            return_dict=True,
            **{self.cache_arg: cache},
        )
        present = []
        for layer in getattr(out, self.cache_arg).layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


class FeedStep(torch.nn.Module):
    """The model with the graph's interface: the same named feed in, the same named outputs out
    (``logits``, ``present.*``), so the PyTorch teacher runs wherever the graph does (validation's
    torch runner). A prefill feed made for another graph (a student's: fewer layers, other heads)
    works too: an empty or missing past is replaced by this model's own empty past."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.layout = KVLayout.from_config(model.config)
        self.step = CausalLMWithPast(model, self.layout)
        self.input_names = (*FIXED_INPUTS, *self.layout.past_names())

    def forward(self, **feed: torch.Tensor) -> dict[str, torch.Tensor]:
        past = [feed.get(k) for k in self.layout.past_names()]
        if any(p is None for p in past) or all(p.shape[2] == 0 for p in past):
            batch = feed["input_ids"].shape[0]
            past = [torch.from_numpy(v) for v in self.layout.empty(batch).values()]
        outs = self.step(*(feed[k] for k in FIXED_INPUTS), tuple(past))
        return dict(zip(("logits", *self.layout.present_names()), outs))
