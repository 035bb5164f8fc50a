"""``genai_config.json``: what onnxruntime-genai needs to run a text-generation bundle.

The KV-cache export (``export.causal_lm``) already uses the input and output names ONNX Runtime
GenAI's decoder expects (``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.%d.key`` / ``.value`` in, ``logits``, ``present.%d.key`` / ``.value`` out), with
a past that grows by the new tokens each step (GenAI's default: no shared past/present buffer; the
fused graph, ``export.fused_decoder``, shares one max-length buffer: ``past_present_share_buffer``). The
config names those, the decoder's shape (layers, heads, KV heads, head size), the special tokens
and greedy search, and the model file: by default the bundle's ONNX Runtime model, so
``onnxruntime_genai.Model(bundle)`` runs the file our runner runs. GenAI's tokenizer reads
``tokenizer.json`` from the same folder; the bundle keeps its tokenizer in ``tokenizer/``, so use
GenAI with token ids, or point it at that folder's files.
"""

from __future__ import annotations

from modelpress.export.causal_lm import KVLayout, export_causal_lm
from modelpress.export.onnx_export import ExportResult
from pathlib import Path
from typing import Any

from modelpress.fileio import write_json
from modelpress.paths import MODEL_INT8_ONNX

FILE = "genai_config.json"
#: model types GenAI runs through its plain decoder with these names; another family (GPT-2 too: GenAI
#: expects a fused "past_%d" there) runs as "llama", the same interface
KNOWN_TYPES = ("llama", "mistral", "phi", "phi3", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo")


def _token(tokenizer: Any, config: Any, name: str) -> int | None:
    value = getattr(tokenizer, name, None) if tokenizer is not None else None
    if value is None:
        value = getattr(config, name, None)
    return int(value) if isinstance(value, int) else None


def genai_config(
    model_config: Any,
    tokenizer: Any,
    *,
    filename: str,
    context_length: int | None = None,
    share_buffer: bool = False,
) -> dict:
    """The config for ``filename`` (relative to the bundle) of a decoder with ``model_config``;
    ``share_buffer``: the graph takes one max-length buffer as past and present (the fused graph's
    GroupQueryAttention), so GenAI allocates the cache once and never copies it."""
    text = model_config.get_text_config(decoder=True) if hasattr(model_config, "get_text_config") else model_config
    layout = KVLayout.from_config(model_config)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head")
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd")
    context = int(
        context_length or getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None) or 2048
    )
    eos = _token(tokenizer, text, "eos_token_id")
    bos = _token(tokenizer, text, "bos_token_id")
    pad = _token(tokenizer, text, "pad_token_id")
    kind = getattr(text, "model_type", "llama")
    return {
        "model": {
            "type": kind if kind in KNOWN_TYPES else "llama",
            "bos_token_id": bos if bos is not None else eos,
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else eos,
            "context_length": int(context),
            "vocab_size": int(text.vocab_size),
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": layout.head_dim,
                "hidden_size": int(hidden),
                "num_attention_heads": int(heads),
                "num_hidden_layers": layout.num_layers,
                "num_key_value_heads": layout.num_kv_heads,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "num_beams": 1,
            "max_length": int(context),
            "min_length": 0,
            "past_present_share_buffer": bool(share_buffer),
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def write_genai_config(
    folder: str | Path, model_config: Any, tokenizer: Any, *, filename: str, share_buffer: bool = False
) -> Path:
    return write_json(
        Path(folder) / FILE, genai_config(model_config, tokenizer, filename=filename, share_buffer=share_buffer)
    )


def export_for_genai(
    model: Any,
    tokenizer: Any,
    out_path: str | Path,
    *,
    task: Any,
    opset: int,
    atol: float,
    fused: bool = False,
    pressed: str = MODEL_INT8_ONNX,
) -> ExportResult:
    """The causal LM exported with its KV cache, and beside it the config onnxruntime-genai runs the bundle's
    ONNX Runtime model by (the export's names are its own). The text-generation task's exporters: ``fused``,
    the graph with ONNX Runtime's fused operators (``export.fused_decoder``), whose past and present share one
    buffer."""
    result = export_causal_lm(model, tokenizer, out_path, opset=opset, atol=atol, fused=fused)
    write_genai_config(Path(out_path).parent, model.config, tokenizer, filename=pressed, share_buffer=fused)
    return result


def export_fused_for_genai(
    model: Any,
    tokenizer: Any,
    out_path: str | Path,
    *,
    task: Any,
    opset: int,
    atol: float,
    pressed: str = MODEL_INT8_ONNX,
):
    """:func:`export_for_genai` of the fused graph (``task_options.decoder_graph = "fused"``)."""
    return export_for_genai(model, tokenizer, out_path, task=task, opset=opset, atol=atol, fused=True, pressed=pressed)
