"""Find and open images: the raw material of the image modality (calibration, evaluation).

Sources: a folder (every image file below it, recursively, in path order), a ``.jsonl`` /
``.csv`` / ``.tsv`` with an image-path column (paths relative to the file's folder), or a
``datasets.save_to_disk`` folder with an ``Image`` column. An example is a reference (a path, or
a row of a dataset), never decoded pixels: images are opened batch by batch when encoded, so
memory stays bounded whatever the number of images. A file that is not a readable image is a
:class:`BadInputError` naming it: when the sources are read (header check) or, for damage past
the header, when it is decoded.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelpress.calibration_data.loaders import open_dataset, read_records
from modelpress.errors import BadInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: files that mark a folder as written by ``datasets.save_to_disk``
DATASET_MARKERS = ("state.json", "dataset_dict.json", "dataset_info.json")


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


def check_readable(refs: list[Any]) -> list[Any]:
    """Each image file's header read now (PIL ``verify``, no decoding): a file that is not an image
    fails in a second, before any model is loaded; dataset rows are checked when decoded."""
    from PIL import Image, UnidentifiedImageError

    for ref in refs:
        if isinstance(ref, (str, Path)):
            try:
                with Image.open(ref) as image:
                    image.verify()
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise BadInputError(f"{ref}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    return refs


def open_image(example: Any) -> np.ndarray:
    """An H×W×3 uint8 RGB array from a path, a :class:`DatasetImage`, a PIL image or an H×W(×C)
    uint8 array, made RGB by transformers' own ``convert_to_rgb`` (transparency onto white);
    anything unreadable is one BadInputError naming it."""
    from PIL import Image, UnidentifiedImageError
    from transformers.image_transforms import convert_to_rgb

    try:
        if isinstance(example, Image.Image):
            image = example
        elif isinstance(example, DatasetImage):
            image = example.load()
            if isinstance(image, dict):  # an Image feature without decoding: {"bytes", "path"}
                image = Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else Image.open(image["path"])
        elif isinstance(example, (str, Path)):
            image = Image.open(example)
        elif hasattr(example, "shape") and hasattr(example, "dtype"):
            image = Image.fromarray(example)
        else:
            raise BadInputError(f"{type(example).__name__}: not an image, path or array")
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, TypeError) as exc:
        raise BadInputError(f"{example}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    return convert_to_rgb(image, return_numpy=True)
