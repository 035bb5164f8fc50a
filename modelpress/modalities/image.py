"""The image modality: the model's own image processor (``AutoImageProcessor``: resize, crop,
rescale, normalize as its preprocessor config says) turns images into ``pixel_values``, NCHW
float32, at the one resolution the processor produces (what export fixes; the batch is dynamic).

Examples are references (paths, dataset rows; ``calibration_data.images``), opened and processed
one batch at a time, each made an H×W×3 uint8 RGB array by ``calibration_data.images.open_image``
(16-bit scaled, palette / CMYK / grayscale converted, transparency onto white, too small or too large
refused) and handed to the processor as channels last, said explicitly: left to infer the layout, a
processor reads a 3-pixel-high image as channels first. The PIL backend of the processors is used: the
default one needs torchvision, which the CPU install does not carry.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from modelpress.errors import BadInputError
from modelpress.modalities import Batch, Encoder, Modality
from modelpress.calibration_data.images import check_readable, load_images, open_image
from modelpress.calibration_data.loaders import sample
from modelpress.image_processing import DeployImageProcessor
import inspect

log = logging.getLogger(__name__)

INPUT = "pixel_values"
EXAMPLE_BATCH, PARITY_BATCH = 2, 3


class ImageEncoder(Encoder):
    def __init__(self, processor: Any, *, input_names: Sequence[str] = (INPUT,)) -> None:
        self.processor = processor
        self.input_names = tuple(input_names)

    def encode(self, examples: Sequence[Any], *, pad_to: int | None = None) -> Batch:
        """``pad_to`` does not apply: every image is processed to the model's resolution."""
        if not examples:
            raise BadInputError("no images to encode")
        images = [open_image(e) for e in examples]
        pixels = self.processor(images=images, return_tensors="np", input_data_format="channels_last")[INPUT]
        return Batch({INPUT: np.ascontiguousarray(pixels, dtype=np.float32)})

    def timing_lengths(self, seq_lengths: Sequence[int]) -> tuple[int | None, ...]:
        return (None,)

    def length_of(self, feed: Mapping[str, np.ndarray]) -> int:
        return int(feed[INPUT].shape[2])  # the resolution (H) stands where text has its length


def processed_shape(processor: Any) -> tuple[int, int, int]:
    """(C, H, W) the processor makes of a square image: the export's fixed image shape."""
    from PIL import Image

    out = processor(images=[Image.new("RGB", (257, 257), (127, 127, 127))], return_tensors="np")[INPUT]
    return tuple(int(d) for d in out.shape[1:])


class ImageModality(Modality):
    name = "image"
    corpus = "image"  # distillation's corpus builder (modelpress.distill.corpora)
    preprocessor_dir = "image_processor"
    field_key = "image_field"

    def load_preprocessor(self, ref: str, *, trust_remote_code: bool = False) -> Any:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(ref, trust_remote_code=trust_remote_code, backend="pil")

    def load_deployed(self, folder: Any) -> Any:
        """The bundle's ``preprocessor_config.json`` applied in numpy (``modelpress.image_processing``);
        a processor type it does not know needs transformers, as before."""
        try:
            return DeployImageProcessor.from_folder(folder)
        except BadInputError as exc:
            log.warning("%s; loading the image processor with transformers", exc)
            return self.load_preprocessor(str(folder))

    def load_examples(self, path, *, field: str, num_samples: int | None, seed: int = 0) -> list[Any]:
        return check_readable(sample(load_images(path, field=field), num_samples, seed=seed))

    def model_inputs(self, model: Any, processor: Any) -> tuple[str, ...]:
        if INPUT not in inspect.signature(model.forward).parameters:
            raise BadInputError(f"{type(model).__name__}: not an image model (its forward takes no pixel_values)")
        return (INPUT,)

    def check_graph_inputs(self, names: Sequence[str], *, source: object = "") -> tuple[str, ...]:
        if tuple(names) != (INPUT,):
            raise BadInputError(f"{source}: its inputs ({', '.join(names)}) are not an image model's ({INPUT})")
        return tuple(names)

    def encoder(
        self,
        processor: Any,
        *,
        input_names: Sequence[str],
        max_length: int = 0,
        input_shapes: Mapping[str, Sequence[Any]] | None = None,
    ) -> ImageEncoder:
        return ImageEncoder(processor, input_names=input_names)

    def export_examples(self, processor: Any, input_names: Sequence[str]) -> tuple[dict, dict]:
        import torch

        shape = processed_shape(processor)
        gen = torch.Generator().manual_seed(0)
        example = torch.randn((EXAMPLE_BATCH, *shape), generator=gen)
        parity = torch.randn((PARITY_BATCH, *shape), generator=gen)
        return {INPUT: example}, {INPUT: parity}

    def dynamic_shapes(self, input_names: Sequence[str]) -> dict[str, dict[int, Any]]:
        import torch

        return {INPUT: {0: torch.export.Dim("batch")}}

    def engine_profile(self, input_names: Sequence[str], cfg: Any) -> dict[str, dict[str, tuple[int, ...]]]:
        raise BadInputError(
            "TensorRT engines for image models are not built yet (no GPU to test them on); "
            "the tensorrt preset's Q/DQ model is written and rule-checked"
        )


IMAGE = ImageModality()
