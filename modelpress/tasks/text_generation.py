"""text-generation: causal language models (GPT-2, Llama, Qwen2, Phi-3, Mistral families:
``AutoModelForCausalLM``), exported as one graph with a KV cache (``export.causal_lm``: prefill
and decode steps) and generated with by ``modelpress.generation.TextGenerator``.

Built so far: the export (parity on a prefill and on decode steps), generation (greedy, sampled,
streamed, batched with left padding, stop tokens, the chat template), the metrics as functions
(``validate.perplexity``), and static int8 of the graph by the existing quantizer when it is given
feeds. Not yet: calibration, validation and the gate inside ``modelpress run``, the bundle and
distillation, so ``run`` / ``distill`` refuse the task with one line; ``metrics`` and ``distill``
below say what they will be.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from modelpress.tasks import LOWER, DistillSpec, Task


@dataclass(frozen=True)
class TextGeneration(Task):
    name: ClassVar[str] = "text-generation"
    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    output_name: ClassVar[str] = "logits"
    metrics: ClassVar[Mapping[str, str]] = {"perplexity": LOWER}
    eval_formats: ClassVar[tuple[str, ...]] = ("text",)
    distill: ClassVar[DistillSpec] = DistillSpec(output="token_logits", losses=frozenset({"kl"}), defaults={"kl": 1.0})
    pipeline_unavailable: ClassVar[str | None] = (
        "text-generation runs export only so far (int8, validation and the bundle are not built yet): "
        "`modelpress export --task text-generation MODEL --out model.onnx` writes the KV-cache graph, "
        "and modelpress.generation.TextGenerator generates with it")

    def export(self, model: Any, preprocessor: Any, out_path: str | Path, *, opset: int, atol: float) -> Any:
        from modelpress.export.causal_lm import export_causal_lm

        return export_causal_lm(model, preprocessor, out_path, opset=opset, atol=atol)
