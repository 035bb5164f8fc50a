"""The bundle's image processor without transformers: ``preprocessor_config.json`` applied in numpy
and Pillow, as transformers' PIL backend applies it.

A bundle's ``image_processor/`` folder is what ``save_pretrained`` wrote on the pressing side; the
JSON holds the values set on the processor, and the class defaults of its ``image_processor_type``
(:data:`PROCESSORS`) fill the rest, as transformers does on load. Per image (H×W×3 uint8 RGB,
``calibration_data.images.open_image``): resize with Pillow and the processor's ``resample``
filter (to ``size``: height × width, or the shortest edge kept in proportion; ConvNeXt's ``crop_pct``
rule: shortest edge ÷ crop_pct, then a centre crop, below 384), centre crop to ``crop_size`` (zero
padding where the image is smaller), rescale (float64 × ``rescale_factor``, then float32),
normalize ((x − mean) ÷ std in float32). The output is ``pixel_values`` NCHW float32, equal to
transformers' processor's (``tests/test_deploy.py`` compares them).

Deploy-side (``modelpress.deploy_side``): imports numpy and Pillow only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from modelpress.errors import BadInputError

STANDARD_MEAN = STANDARD_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BILINEAR, BICUBIC = 2, 3  # Pillow's resampling filter numbers, as preprocessor_config.json writes them

_COMMON = dict(do_resize=True, do_rescale=True, do_normalize=True, rescale_factor=1 / 255, do_center_crop=False)
#: the class defaults of each supported processor (transformers' ``*ImageProcessorPil`` attributes)
PROCESSORS: dict[str, dict[str, Any]] = {
    "ViTImageProcessor": dict(
        _COMMON, resample=BILINEAR, image_mean=STANDARD_MEAN, image_std=STANDARD_STD, size={"height": 224, "width": 224}
    ),
    "DeiTImageProcessor": dict(
        _COMMON,
        resample=BICUBIC,
        image_mean=STANDARD_MEAN,
        image_std=STANDARD_STD,
        size={"height": 256, "width": 256},
        crop_size={"height": 224, "width": 224},
        do_center_crop=True,
    ),
    "ConvNextImageProcessor": dict(
        _COMMON,
        resample=BICUBIC,
        image_mean=STANDARD_MEAN,
        image_std=STANDARD_STD,
        size={"shortest_edge": 384},
        crop_pct=224 / 256,
    ),
    "MobileNetV2ImageProcessor": dict(
        _COMMON,
        resample=BILINEAR,
        image_mean=STANDARD_MEAN,
        image_std=STANDARD_STD,
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        do_center_crop=True,
    ),
    "BitImageProcessor": dict(
        _COMMON,
        resample=BICUBIC,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        do_center_crop=True,
    ),
}
#: ConvNeXt resizes the shortest edge to size ÷ crop_pct and crops below this size (warps at or above it)
CONVNEXT_WARP = 384


@dataclass(frozen=True)
class DeployImageProcessor:
    """One processor's settings (``preprocessor_config.json`` over its class defaults)."""

    kind: str
    do_resize: bool
    size: Mapping[str, int]
    resample: int
    do_center_crop: bool
    crop_size: Mapping[str, int] | None
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    crop_pct: float | None = None

    @classmethod
    def from_folder(cls, folder: str | Path) -> "DeployImageProcessor":
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise BadInputError(f"{folder}: no preprocessor_config.json (the bundle's image processor)")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        return cls.from_config(config, where=path)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, where: object = "preprocessor_config.json"
    ) -> "DeployImageProcessor":
        kind = str(config.get("image_processor_type", "")).removesuffix("Fast").removesuffix("Pil")
        if kind not in PROCESSORS:
            raise BadInputError(
                f"{where}: image processor {kind or '(none named)'} is not one the bundle can run without "
                f"transformers (supported: {', '.join(PROCESSORS)})"
            )
        settings = {**PROCESSORS[kind], **{k: v for k, v in config.items() if v is not None}}
        mean, std = settings["image_mean"], settings["image_std"]
        return cls(
            kind=kind,
            do_resize=bool(settings["do_resize"]),
            size=_size(settings["size"], square="height" in PROCESSORS[kind]["size"]),
            resample=int(settings["resample"]),
            do_center_crop=bool(settings["do_center_crop"]),
            crop_size=_size(settings.get("crop_size"), square=True),
            do_rescale=bool(settings["do_rescale"]),
            rescale_factor=float(settings["rescale_factor"]),
            do_normalize=bool(settings["do_normalize"]),
            image_mean=tuple(float(m) for m in (mean if isinstance(mean, (list, tuple)) else [mean] * 3)),
            image_std=tuple(float(s) for s in (std if isinstance(std, (list, tuple)) else [std] * 3)),
            crop_pct=settings.get("crop_pct"),
        )

    # -- the steps (each on a C×H×W array, as transformers' PIL backend) -------------------------------
    def _resize(self, image: np.ndarray) -> np.ndarray:
        size = self.size
        if self.kind == "ConvNextImageProcessor":
            edge = int(size["shortest_edge"])
            if edge >= CONVNEXT_WARP:
                return _pil_resize(image, (edge, edge), self.resample)
            image = _pil_resize(image, _shortest_edge(image, int(edge / self.crop_pct)), self.resample)
            return _center_crop(image, (edge, edge))
        if "shortest_edge" in size:
            return _pil_resize(image, _shortest_edge(image, int(size["shortest_edge"])), self.resample)
        return _pil_resize(image, (int(size["height"]), int(size["width"])), self.resample)

    def process(self, image: np.ndarray) -> np.ndarray:
        """One H×W×3 uint8 image → C×H×W float32."""
        image = np.moveaxis(np.asarray(image), -1, 0)
        if self.do_resize:
            image = self._resize(image)
        if self.do_center_crop and self.crop_size:
            image = _center_crop(image, (int(self.crop_size["height"]), int(self.crop_size["width"])))
        if self.do_rescale:
            image = (image.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            image = image if np.issubdtype(image.dtype, np.floating) else image.astype(np.float32)
            mean = np.asarray(self.image_mean, dtype=image.dtype)[:, None, None]
            std = np.asarray(self.image_std, dtype=image.dtype)[:, None, None]
            image = (image - mean) / std
        return image.astype(np.float32)

    def __call__(self, *, images: Sequence[np.ndarray], return_tensors: str = "np", **_: Any) -> dict[str, np.ndarray]:
        """``{"pixel_values": [N, C, H, W] float32}`` of H×W×3 uint8 images (channels last, as the
        image encoder hands them to transformers' processor)."""
        return {"pixel_values": np.stack([self.process(image) for image in images])}


def _size(value: Any, *, square: bool) -> dict[str, int] | None:
    """A size as the processor reads it: {height, width} or {shortest_edge} (an int: a square, or the
    shortest edge for processors that keep proportions)."""
    if value is None:
        return None
    if isinstance(value, int):
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    if isinstance(value, Mapping) and ({"height", "width"} <= set(value) or "shortest_edge" in value):
        return {k: int(v) for k, v in value.items() if v is not None}
    raise BadInputError(f"preprocessor_config.json: size {value!r} is not height/width or shortest_edge")


def _shortest_edge(image: np.ndarray, edge: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``edge``, the longer in proportion (rounded down, as
    transformers' ``get_resize_output_image_size``)."""
    height, width = image.shape[-2:]
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (new_long, edge) if width <= height else (edge, new_long)


def _pil_resize(image: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(np.moveaxis(image, 0, -1).astype(np.uint8))
    return np.moveaxis(np.asarray(pil.resize((size[1], size[0]), resample=resample)), -1, 0)


def _center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centre ``size`` of a C×H×W image; an image smaller than it is zero-padded around first."""
    height, width = image.shape[-2:]
    crop_h, crop_w = size
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0:
        return image[..., top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros((*image.shape[:-2], new_h, new_w), dtype=image.dtype)
    pad_top, pad_left = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
    padded[..., pad_top : pad_top + height, pad_left : pad_left + width] = image
    top, left = top + pad_top, left + pad_left
    return padded[..., max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]
