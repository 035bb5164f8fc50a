"""Image eval sets for image classification (format ``images``): what the model is run on, and the
gold class of each image when the source has one.

  * an imagefolder: ``eval/<class name>/**/*.jpg`` — each sub-folder is a class, named as in the
    model's ``label2id`` (or its class id as digits); images directly in the folder: no labels
  * ``.jsonl`` / ``.csv`` / ``.tsv`` with an image path (``validate.image_field``, relative to the
    file's folder) and an optional ``validate.label_field``: a class id, or a name in ``label2id``
  * a ``datasets.save_to_disk`` folder with an ``Image`` column and an optional label column

A class the model does not have is one BadInputError naming it and the model's classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from modelpress.calibration_data.images import (
    IMAGE_SUFFIXES,
    DatasetImage,
    check_readable,
    image_column,
    image_files,
    image_paths,
    is_dataset_folder,
    load_images,
)
from modelpress.calibration_data.loaders import open_dataset, read_records
from modelpress.errors import BadInputError
from modelpress.tasks import EvalSet


@dataclass(frozen=True)
class ImageSet(EvalSet):
    """image-classification's record: image references, with a gold class per image when the source has one."""

    images: tuple = ()
    labels: tuple[int, ...] | None = None

    @property
    def examples(self) -> tuple:
        return self.images

    @property
    def has_gold(self) -> bool:
        return self.labels is not None

    def counts(self) -> dict:
        return {"num_texts": 0, "num_pairs": 0, "num_words": 0, "has_labels": self.labels is not None}


def _class_id(value: Any, label2id: Mapping[str, int], num_labels: int | None, where: str) -> int:
    """A gold class: an id, its digits, or a class name of the model."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value in label2id:
        return int(label2id[value])
    try:
        cid = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        cid = None
    count = num_labels if num_labels is not None else len(label2id) or None
    if cid is None or cid < 0 or (count is not None and cid >= count):
        names = ", ".join(sorted(label2id, key=lambda n: label2id[n])[:12]) or f"0..{(count or 1) - 1}"
        raise BadInputError(f"{where}: label {value!r} is not a class of the model ({names})")
    return cid


def load_image_eval(
    path: str | Path,
    *,
    image_field: str = "image",
    label_field: str = "label",
    label2id: Mapping[str, int] | None = None,
    num_labels: int | None = None,
    num_samples: int = 0,
) -> ImageSet:
    path = Path(path)
    label2id = dict(label2id or {})
    if not path.exists():
        raise BadInputError(f"{path}: evaluation data not found")
    images: list[Any]
    labels: list[int] | None
    if is_dataset_folder(path):
        ds = open_dataset(path)
        column = image_column(ds, path, image_field)
        images = [DatasetImage(str(path), i, column, ds) for i in range(len(ds))]
        labels = None
        if label_field in ds.column_names:
            labels = [_class_id(v, label2id, num_labels, f"{path}: row {i + 1}") for i, v in enumerate(ds[label_field])]
    elif path.is_dir():
        classes = sorted(d for d in path.iterdir() if d.is_dir() and image_files(d))
        if classes:
            images, labels = [], []
            for d in classes:
                cid = _class_id(d.name, label2id, num_labels, f"{d} (class folder)")
                files = image_files(d)
                images += files
                labels += [cid] * len(files)
            loose = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if loose:
                raise BadInputError(f"{path}: {len(loose)} image(s) outside the class folders (e.g. {loose[0].name})")
        else:
            images, labels = load_images(path), None
    else:
        records = read_records(path)
        images = image_paths(records, image_field)
        has = label_field in records[0]
        labels = None
        if has:
            labels = []
            for i, r in enumerate(records):
                if label_field not in r:
                    raise BadInputError(f"{records.where(i)}: no '{label_field}' (the first record has one)")
                labels.append(_class_id(r[label_field], label2id, num_labels, records.where(i)))
    if num_samples:
        images, labels = images[:num_samples], (labels[:num_samples] if labels is not None else None)
    check_readable(images)
    return ImageSet(
        images=tuple(images), labels=tuple(labels) if labels is not None else None, source=str(path), format="images"
    )
