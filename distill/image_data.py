"""The distillation corpus of an image model: image references (files, dataset rows) and optional
gold classes, read with the eval readers of ``tasks.images`` (an imagefolder's class
sub-folders, a .jsonl / .csv of paths and labels, a datasets folder) or the calibration readers
when there are no labels. Images are decoded and run through the teacher's image processor one
batch at a time when a batch is collated, so memory holds a batch, never the corpus.

It offers what the trainer, the teacher cache and the layer choice ask of a text corpus
(``TokenizedCorpus``): a length per row (all equal: one resolution), ``collate`` and a fingerprint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from modelpress.calibration_data.loaders import sample
from modelpress.errors import BadInputError
from modelpress.modalities.image import IMAGE
from modelpress.tasks.images import load_image_eval


@dataclass(frozen=True)
class ImageCorpus:
    images: tuple[Any, ...]  # paths or dataset rows (calibration_data.images)
    labels: tuple[int, ...] | None  # gold class per image (distill.label_field)
    encoder: Any  # modalities.image.ImageEncoder of the teacher's processor
    fingerprint: str  # the images (path, size, mtime) and labels: checkpoint/cache validity

    def __len__(self) -> int:
        return len(self.images)

    @property
    def lengths(self) -> list[int]:
        return [1] * len(self.images)

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """``pixel_values`` of the images at ``indices``, ``labels`` when present, and ``index``."""
        indices = [int(i) for i in indices]
        feed = self.encoder.encode([self.images[i] for i in indices]).feed
        batch = {name: torch.from_numpy(array) for name, array in feed.items()}
        if self.labels is not None:
            batch["labels"] = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        batch["index"] = torch.tensor(indices, dtype=torch.long)
        return batch


def _fingerprint(images: Sequence[Any], labels: Sequence[int] | None) -> str:
    digest = hashlib.sha256()
    for ref in images:
        digest.update(repr(ref).encode())
        if isinstance(ref, (str, Path)):
            stat = Path(ref).stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    if labels is not None:
        digest.update(repr(tuple(labels)).encode())
    return digest.hexdigest()


def load_image_corpus(
    cfg: Any, processor: Any, *, label2id: Mapping[str, int] | None, num_labels: int | None
) -> ImageCorpus:
    """The images of ``cfg.data`` (``[distill]``), sampled to ``cfg.num_samples`` with ``cfg.seed``."""

    try:
        if cfg.label_field is None:
            pairs = [(ref, None) for ref in IMAGE.load_examples(cfg.data, field=cfg.image_field, num_samples=None)]
        else:
            es = load_image_eval(
                cfg.data,
                image_field=cfg.image_field,
                label_field=cfg.label_field,
                label2id=label2id,
                num_labels=num_labels,
            )
            if es.labels is None:
                raise BadInputError(f"{cfg.data}: no labels in '{cfg.label_field}' (distill.label_field)")
            pairs = list(zip(es.images, es.labels))  # type: ignore[arg-type]  # labels were checked not None above
    except BadInputError as exc:
        raise BadInputError(f"distill.data: {exc}") from None
    pairs = sample(pairs, cfg.num_samples, seed=cfg.seed)
    if len(pairs) < 2:
        raise BadInputError(f"distill.data: {cfg.data}: need at least 2 images to distill, found {len(pairs)}")
    images = tuple(ref for ref, _ in pairs)
    labels = tuple(int(lab) for _, lab in pairs) if cfg.label_field is not None else None  # type: ignore[call-overload]  # with a label field every image has its label
    return ImageCorpus(
        images=images,
        labels=labels,
        encoder=IMAGE.encoder(processor, input_names=("pixel_values",)),
        fingerprint=_fingerprint(images, labels),
    )
