"""The deployable bundle's Python API: ``load(bundle_dir)`` → the task's methods on raw inputs.

``load`` reads ``bundle.json`` (the configured task, input names, length limit), the preprocessor
folder and the int8 model, and returns the task's bundle class (``embed`` for feature extraction,
``classify`` for classifiers, ``tag`` for token classification), all through the same Predictor
path validation measures. The runtime comes from the runtime registry (ONNX Runtime by default).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from modelpress.errors import BadInputError
from modelpress.inference import Predictor
from modelpress.modalities import get_modality
from modelpress.runtimes.registry import create_runner
from modelpress.tasks import task_from_dict

BUNDLE_META = "bundle.json"
INT8_MODEL = "model.int8.onnx"


def write_bundle_meta(root: Path, *, task: Any, input_names: Sequence[str], max_length: int,
                      max_positions: int | None = None, label_names: Sequence[str] = ()) -> None:
    from modelpress.fileio import write_json

    write_json(root / BUNDLE_META, {"task": task.describe(), "input_names": list(input_names),
                                    "max_length": max_length, "max_positions": max_positions,
                                    "label_names": list(label_names)})


def read_bundle_meta(root: Path) -> dict[str, Any]:
    path = Path(root) / BUNDLE_META
    if not path.is_file():
        raise BadInputError(f"{root}: not a modelpress bundle (no {BUNDLE_META})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        meta["task"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise BadInputError(f"{path}: not a valid bundle description") from None
    return meta


class Bundle(Predictor):
    """A loaded bundle. Use as a context manager or call ``close()``."""

    def __init__(self, root: Path, *, model_file: str = INT8_MODEL, runtime: str = "onnxruntime",
                 threads: int = 0, verify: bool = True):
        self.root = Path(root)
        if verify:  # a bundle is what its manifest says, or it is not loaded
            from modelpress.manifest import require_intact

            require_intact(self.root)
        meta = read_bundle_meta(self.root)
        task = task_from_dict(meta["task"])
        modality = get_modality(task.modality)
        preprocessor = modality.load_preprocessor(str(self.root / modality.preprocessor_dir))
        self.meta = meta
        name = "int8" if model_file == INT8_MODEL else model_file
        runner = create_runner(runtime, self.root / model_file, threads=threads, name=name)
        runner.__enter__()
        # inputs are truncated to what the model can take, whatever bundle.json says
        limit = meta.get("max_positions") or modality.position_limit(None, preprocessor)
        length = int(meta["max_length"]) if not limit else min(int(meta["max_length"]), int(limit))
        encoder = modality.encoder(preprocessor, input_names=runner.input_names, max_length=length)
        super().__init__(runner, task, encoder, name=name)

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.runner.close()

    def label_names(self) -> list[str]:
        return list(self.meta.get("label_names") or [])

    def __getattr__(self, name: str) -> Any:
        # another task's method (embed on a classifier): say which one this bundle has
        if not name.startswith("_"):
            from modelpress.tasks import TASKS

            task = self.__dict__.get("task")
            if task is not None and any(name in TASKS.get(t).api for t in TASKS.names()):
                raise BadInputError(f"this bundle is a {task.name} model; use "
                                    f"{' / '.join(f'{m}()' for m in task.api)}")
        raise AttributeError(name)

    @staticmethod
    def _texts(texts: Any) -> list[Any]:
        """One input or a list of them (a bare string is one text, never its characters)."""
        return [texts] if isinstance(texts, str) else list(texts)


def load(bundle_dir: str | Path, *, model_file: str = INT8_MODEL, runtime: str = "onnxruntime",
         threads: int = 0, verify: bool = True) -> Bundle:
    """The bundle at ``bundle_dir``, as its task's bundle class (methods: ``task.api``).
    ``verify``: check every file against ``manifest.json`` first (a changed, added or missing file
    is an error); validation turns it off for the run's own unpublished staging folder."""
    meta = read_bundle_meta(Path(bundle_dir))
    cls = task_from_dict(meta["task"]).bundle_class()
    return cls(Path(bundle_dir), model_file=model_file, runtime=runtime, threads=threads, verify=verify)
