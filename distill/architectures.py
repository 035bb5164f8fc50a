"""Where each encoder or decoder architecture keeps its stack of layers (facts used to cut a layer subset).

One :class:`LayerSpec` per ``config.model_type``, registered with :func:`register_layers`; a model
type that is not registered raises :class:`BadInputError` listing the known ones, so a new
architecture is one registration, not a branch in the student builder.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelpress.errors import BadInputError


@dataclass(frozen=True)
class LayerSpec:
    """Where the layer stack lives, relative to ``model.base_model``, and which config key counts it."""

    layers_path: str  # dotted attribute path to the nn.ModuleList of layers
    num_layers_attr: str = "num_hidden_layers"  # config attribute holding the layer count


LAYER_SPECS: dict[str, LayerSpec] = {}


def register_layers(spec: LayerSpec, *model_types: str) -> None:
    for model_type in model_types:
        LAYER_SPECS[model_type] = spec


register_layers(
    LayerSpec("encoder.layer"),
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "electra",
    "mpnet",
    "deberta",
    "deberta-v2",
    "ernie",
    "xlm-roberta-xl",
    "roformer",
    "data2vec-text",
    "nezha",
    "megatron-bert",
)
register_layers(LayerSpec("transformer.layer", num_layers_attr="n_layers"), "distilbert")
register_layers(LayerSpec("layers"), "vit", "deit", "beit")  # transformers 5 dropped their ``encoder``
register_layers(LayerSpec("encoder.layer"), "dinov2", "data2vec-vision")
# decoders (text-generation): DistilGPT2-style students keep a subset of the blocks
register_layers(LayerSpec("h", num_layers_attr="n_layer"), "gpt2")
register_layers(LayerSpec("layers"), "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2")


def layer_spec(model_type: str) -> LayerSpec:
    try:
        return LAYER_SPECS[model_type]
    except KeyError:
        raise BadInputError(
            f"distill.layers: cannot cut layers from model type '{model_type}' "
            f"(known: {', '.join(sorted(LAYER_SPECS))}); name a student with distill.student instead"
        ) from None
