"""image-classification: one label per image, from an image-classification model's ``logits``
(ViT, DeiT, Swin, ResNet, ConvNeXt, MobileNet, ... : ``AutoModelForImageClassification``).

The head and the metrics are text classification's (top-1 agreement, mean KL(teacher ‖ model),
accuracy against gold labels when the eval set has them; the gate judges accuracy, else
agreement), on the image modality. Eval format ``images`` (``tasks.images``): an imagefolder,
a ``.jsonl`` / ``.csv`` of image paths and labels, or a datasets folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelpress import task_match
from modelpress.tasks import DistillSpec
from modelpress.tasks.text_classification import TextClassification, softmax
from modelpress.bundle_base import Bundle
from modelpress.tasks.images import load_image_eval


@dataclass(frozen=True)
class ImageClassification(TextClassification):
    name: ClassVar[str] = "image-classification"
    #: no images ship: a recipe names its own calibration and eval images
    auto: ClassVar[task_match.AutoSpec] = task_match.AutoSpec(
        architectures=("ForImageClassification",), calibration_data=None, eval_data=None
    )
    modality: ClassVar[str] = "image"
    auto_class: ClassVar[str] = "AutoModelForImageClassification"
    eval_formats: ClassVar[tuple[str, ...]] = ("images",)
    eval_record: ClassVar[str] = "modelpress.tasks.images:ImageSet"
    unit: ClassVar[str] = "images"
    distill: ClassVar[DistillSpec] = DistillSpec(
        output="logits", losses=frozenset({"kl", "ce"}), defaults={"kl": 1.0}, label_loss="ce"
    )

    def read_eval(self, path: str | Path, cfg: Any, *, model_config: Any = None, preprocessor: Any = None):
        return load_image_eval(
            path,
            image_field=cfg.image_field,
            label_field=cfg.label_field,
            label2id=dict(getattr(model_config, "label2id", None) or {}),
            num_labels=getattr(model_config, "num_labels", None),
            num_samples=cfg.num_samples,
        )

    @classmethod
    def bundle_class(cls) -> type:
        class ImageClassifierBundle(Bundle):
            def classify(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
                """Class probabilities, [n_images, n_classes]: paths, PIL images or HxW / HxWxC
                arrays, channels last (uint8; uint16 scaled by value; floats in 0..1), made RGB as
                ``calibration_data.images.open_image`` says (one of them gives [1, n_classes])."""
                images = _as_list(images)
                if not images:  # no images: [0, n_classes], as for any count
                    return np.zeros((0, len(self.labels)), dtype=np.float32)
                return softmax(self.predict(images, batch_size=batch_size))

            @property
            def labels(self) -> list[str]:
                """Class names by index, from the model's config."""
                return self.label_names()

        return ImageClassifierBundle


def _as_list(images: Any) -> list[Any]:
    """One image or a sequence of them (a path, a PIL image and an array are one image each)."""
    if isinstance(images, (str, Path)) or hasattr(images, "getbands") or getattr(images, "ndim", 0) in (2, 3):
        return [images]
    if images is None or isinstance(images, (bytes, bytearray, int, float)) or not hasattr(images, "__iter__"):
        raise TypeError(
            f"classify(): images must be an image (a path, a PIL image, an array) or a list of them, "
            f"got {type(images).__name__}"
        )
    return list(images)
