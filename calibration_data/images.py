"""Find and open images: the raw material of the image modality (calibration, evaluation, the
bundle's ``classify``).

Sources: a folder (every image file below it, recursively, in path order), a ``.jsonl`` /
``.csv`` / ``.tsv`` with an image-path column (paths relative to the file's folder), or a
``datasets.save_to_disk`` folder with an ``Image`` column. An example is a reference (a path, or
a row of a dataset), never decoded pixels: images are opened batch by batch when encoded, so
memory stays bounded whatever the number of images. A file that is not a readable image is a
:class:`BadInputError` naming it: when the sources are read (header check) or, for damage past
the header, when it is decoded.

Every image is made an H×W×3 uint8 RGB array the way transformers users expect (:func:`open_image`):
EXIF orientation applied (as ``transformers.image_utils.load_image`` does); 16-bit images (``I;16``,
``I;16B``, ``I``, uint16 arrays) scaled by value to 8 bits (65535 → 255), never clipped; palette,
CMYK, 1-bit and grayscale images by Pillow's ``convert("RGB")``, and transparency (RGBA, LA, a
palette's transparent entry) composited onto white, both as transformers' ``convert_to_rgb`` does
(:func:`convert_to_rgb`: the same steps without transformers, so a bundle deploys without it).
An image with a side under :data:`MIN_IMAGE_SIDE` pixels, or with more pixels than the
decompression-bomb limit (:func:`pixel_limit`), is a BadInputError naming it, found from the header
before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelpress.calibration_data.loaders import open_dataset, read_records
from modelpress.errors import BadInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: files that mark a folder as written by ``datasets.save_to_disk``
DATASET_MARKERS = ("state.json", "dataset_dict.json", "dataset_info.json")
#: the shortest side an image may have: a 1-pixel row or column carries nothing along that side (a
#: tracking pixel, a spacer GIF, a mask's edge); from 2×2 up an image is resized like any other
MIN_IMAGE_SIDE = 2
#: sets the decompression-bomb limit (pixels) for modelpress's image reading; unset: Pillow's own
PIXEL_LIMIT_ENV = "MODELPRESS_MAX_IMAGE_PIXELS"
#: Pillow modes of 16-bit (and 32-bit integer) gray images, read as 0..65535
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


@dataclass(frozen=True)
class DatasetImage:
    """Row ``row`` of column ``column`` of a datasets folder, decoded only when opened."""

    source: str
    row: int
    column: str
    dataset: Any = field(compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.source}: row {self.row + 1}"

    def load(self):
        return self.dataset[self.row][self.column]


def is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in DATASET_MARKERS)


def image_files(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (by suffix, any case), sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_column(ds: Any, path: Path, wanted: str) -> str:
    """``wanted`` when the dataset has it, else its one ``Image`` column."""
    if wanted in ds.column_names:
        return wanted
    images = [name for name, feat in ds.features.items() if type(feat).__name__ == "Image"]
    if len(images) != 1:
        raise BadInputError(f"{path}: no image column '{wanted}' (columns: {', '.join(ds.column_names)})")
    return images[0]


def image_paths(records: Any, field: str) -> list[Path]:
    """The image path in ``field`` of each record (``calibration_data.loaders.Records``), relative
    to the file's folder unless absolute."""
    out = []
    for i, record in enumerate(records):
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            raise BadInputError(f"{records.where(i)}: no image path in field '{field}'")
        given = Path(value.strip())
        out.append(given if given.is_absolute() else (records.path.parent / given).resolve())
    return out


def load_images(path: str | Path, *, field: str = "image") -> list[Any]:
    """The image references of a source (see the module docstring), in source order."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder")
    if is_dataset_folder(path):
        ds = open_dataset(path)
        column = image_column(ds, path, field)
        refs: list[Any] = [DatasetImage(str(path), i, column, ds) for i in range(len(ds))]
    elif path.is_dir():
        refs = list(image_files(path))
    else:
        refs = image_paths(read_records(path), field)
    if not refs:
        raise BadInputError(f"{path}: no images ({', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)})")
    return refs


def pixel_limit() -> int | None:
    """The most pixels an image may have: ``$MODELPRESS_MAX_IMAGE_PIXELS`` when set, else Pillow's
    own ``PIL.Image.MAX_IMAGE_PIXELS`` (its decompression-bomb limit; ``None``: no limit)."""
    from PIL import Image

    raw = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not raw:
        return Image.MAX_IMAGE_PIXELS
    digits = raw.replace("_", "").replace(",", "")
    if not digits.isdigit() or int(digits) < 1:
        raise BadInputError(f"{PIXEL_LIMIT_ENV}={raw!r}: not a positive whole number of pixels")
    return int(digits)


#: held while Pillow's process-wide limit is swapped: two threads (a server calling ``classify``)
#: swapping it at once would each restore what the other set, leaving the limit off for good
_PILLOW_LIMIT_LOCK = threading.RLock()


@contextmanager
def pillow_limit(limit: int | None):
    """Pillow's decompression-bomb check at ``limit`` while an image is opened, with its warning
    (past ``limit``; Pillow itself raises only past twice it) made an error. Pillow's limit is one
    global: it is swapped under a lock, so concurrent calls put back the value found before them."""
    from PIL import Image

    with _PILLOW_LIMIT_LOCK:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def too_large(where: Any, limit: int | None, size: str = "") -> BadInputError:
    return BadInputError(
        f"{where}: {size}more than the limit of {limit:,} pixels (a decompression bomb?); "
        f"set {PIXEL_LIMIT_ENV} to allow larger images"
    )


def check_size(width: int, height: int, where: Any, limit: int | None) -> None:
    """A side under :data:`MIN_IMAGE_SIDE`, or more than ``limit`` pixels, is a BadInputError."""
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise BadInputError(
            f"{where}: {width}x{height} pixels; an image needs at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
        )
    if limit is not None and width * height > limit:
        raise too_large(where, limit, f"{width}x{height} = {width * height:,} pixels, ")


def open_header(source: Any, where: Any, limit: int | None):
    """``Image.open(source)``: the header read, no pixel decoded, the size checked here (Pillow's
    own check is off for the call, so the message can give the image's size)."""
    from PIL import Image

    with pillow_limit(None):
        image = Image.open(source)
    try:
        check_size(*image.size, where, limit)
    except BadInputError:
        image.close()
        raise
    return image


def check_readable(refs: list[Any]) -> list[Any]:
    """Each image file's header read now (PIL ``verify``, no decoding) and its size checked: a file
    that is not an image, or too small or too large, fails in a second, before any model is loaded;
    dataset rows are checked when decoded."""
    from PIL import UnidentifiedImageError

    limit = pixel_limit()
    for ref in refs:
        if isinstance(ref, (str, Path)):
            try:
                with open_header(ref, ref, limit) as image:
                    image.verify()
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise BadInputError(f"{ref}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    return refs


def _name(example: Any) -> str:
    """How a message names an image: its path or row, else what it is."""
    if isinstance(example, (str, Path, DatasetImage)):
        return str(example)
    if hasattr(example, "getbands"):
        return getattr(example, "filename", "") or f"a {example.mode} PIL image of {example.size[0]}x{example.size[1]}"
    if hasattr(example, "shape") and hasattr(example, "dtype"):
        return f"an array of shape {tuple(example.shape)} ({example.dtype})"
    return type(example).__name__


def _dataset_row(example: DatasetImage, limit: int | None):
    """A dataset row's image: ``datasets`` decodes it itself, so Pillow's own check guards it."""
    from PIL import Image

    try:
        with pillow_limit(limit):
            image = example.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise too_large(example, limit) from None
    if isinstance(image, dict):  # an Image feature without decoding: {"bytes", "path"}
        source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
        image = open_header(source, example, limit)
    return image


def _pil_image(example: Any, limit: int | None):
    """The PIL image of a path, a dataset row or a PIL image, its size checked, not decoded."""
    from PIL import Image

    if isinstance(example, (str, Path)):
        return open_header(example, example, limit)
    if isinstance(example, DatasetImage):
        image = _dataset_row(example, limit)
    elif isinstance(example, Image.Image):
        image = example
    else:
        raise BadInputError(f"{_name(example)}: not an image, path or array")
    check_size(*image.size, _name(example), limit)
    return image


def scale_16_bit(values: np.ndarray) -> np.ndarray:
    """0..65535 to 0..255 by value (x / 257, rounded: 65535 → 255, 32896 → 128), in integers."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _eight_bit_gray(image: Any, where: str):
    """A 16-bit gray image (mode ``I;16*`` or ``I``) as 8-bit ``L``, or ``LA`` when one gray value is
    transparent (a PNG's tRNS), scaled by value: Pillow's own ``convert`` would clip at 255."""
    from PIL import Image

    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise BadInputError(
            f"{where}: {image.mode} pixel values {values.min()}..{values.max()} are outside 0..65535, "
            "not a 16-bit image"
        )
    gray = Image.fromarray(scale_16_bit(values))
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return Image.merge("LA", (gray, Image.fromarray(alpha)))
    return gray


def to_uint8(values: np.ndarray, where: str) -> np.ndarray:
    """Pixel values as uint8: uint16 scaled by value, bool as 0/255, and otherwise transformers'
    rule (``image_transforms.to_pil_image``): whole values in 0..255 are taken as they are, floats in
    0..1 are fractions of 255, anything else is refused rather than clipped."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype == np.uint16:
        return scale_16_bit(values)
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise BadInputError(f"{where}: {values.dtype} values are not pixel values")
    lo, hi = (values.min(), values.max()) if values.size else (0, 0)
    if np.isfinite(lo) and np.isfinite(hi) and np.array_equal(values, np.round(values)) and 0 <= lo and hi <= 255:
        return values.astype(np.uint8)
    if np.issubdtype(values.dtype, np.floating) and 0 <= lo and hi <= 1:
        return np.round(values * 255).astype(np.uint8)
    raise BadInputError(
        f"{where}: {values.dtype} pixel values {lo}..{hi} are neither 0..255 nor 0..1 "
        "(give uint8, uint16, or floats in 0..1)"
    )


def convert_to_rgb(image: Any) -> np.ndarray:
    """A PIL image or an H×W×C uint8 array (C 1, 3 or 4) as H×W×3 uint8 RGB, transparency composited
    onto white: transformers' ``image_transforms.convert_to_rgb``, here so that a deployment host
    needs no transformers (``tests/test_deploy.py`` compares the two)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return np.array(image.convert("RGB"))
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if image.shape[-1] == 4:
        alpha = image[..., 3:4] / 255
        return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(image.dtype)
    return image


def _array_rgb(values: Any) -> np.ndarray:
    """An H×W or H×W×C array (C 1, 3 or 4: channels last, as documented) as H×W×3 uint8."""
    where = _name(values)
    values = np.asarray(values)
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3 or values.shape[-1] not in (1, 3, 4):
        raise BadInputError(f"{where}: not an image (an array is H x W, or H x W x C with C 1, 3 or 4, channels last)")
    check_size(values.shape[1], values.shape[0], where, None)
    return convert_to_rgb(to_uint8(values, where))


def _pil_rgb(image: Any, where: str) -> np.ndarray:
    """A PIL image as H×W×3 uint8, turned upright by its EXIF orientation as transformers'
    ``load_image`` does."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        image = _eight_bit_gray(image, where)
    elif image.mode == "F":
        image = Image.fromarray(to_uint8(np.asarray(image), where))
    return convert_to_rgb(image)


def open_image(example: Any) -> np.ndarray:
    """An H×W×3 uint8 RGB array (see the module docstring) from a path, a :class:`DatasetImage`, a
    PIL image or an H×W(×C) array (channels last); anything unreadable, too small or too large is
    one BadInputError naming it."""
    from PIL import UnidentifiedImageError

    if hasattr(example, "shape") and hasattr(example, "dtype") and not hasattr(example, "getbands"):
        return _array_rgb(example)
    try:
        image = _pil_image(example, pixel_limit())
        image.load()
        return _pil_rgb(image, _name(example))
    except (UnidentifiedImageError, OSError, ValueError, TypeError) as exc:
        raise BadInputError(f"{_name(example)}: not a readable image ({exc.__class__.__name__}: {exc})") from None
