"""The bundle's files and the base class of every task's bundle API, below the task registry.

``bundle.json`` (written by the pipeline's publish step, read by ``load``), the CPU-target check, the
checks a bundle passes before its model is loaded, and :class:`Bundle`, which each task's
``bundle_class`` subclasses with its methods. ``modelpress.bundle.load`` (above the tasks) reads the
configured task from ``bundle.json`` and builds its bundle class; nothing here imports a task.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from modelpress.errors import BadInputError
from modelpress.inference import Predictor
from modelpress.modalities import get_modality
from modelpress.paths import BUNDLE_JSON, MODEL_INT8_ONNX, precision_of_file
from modelpress.runtimes.artifacts import bundle_model_name, runtime_file
from modelpress.runtimes.registry import RUNTIMES, create_runner
from modelpress.fileio import write_json
from modelpress.runtimes.target import Target, missing_flags
from modelpress.manifest import MANIFEST, read_manifest, require_intact, require_not_failed
from modelpress.signing import verify_signature

BUNDLE_META = BUNDLE_JSON
INT8_MODEL = MODEL_INT8_ONNX


def write_bundle_meta(
    root: Path,
    *,
    task: Any,
    input_names: Sequence[str],
    max_length: int,
    max_positions: int | None = None,
    label_names: Sequence[str] = (),
    runtimes: Sequence[str] = ("onnxruntime",),
    input_shapes: Mapping[str, Sequence[int | None]] | None = None,
    target: Mapping[str, Any] | None = None,
    precision: str = "int8",
) -> None:
    """``precision``: what the pressed model holds (``paths.PRESSED_FILES``): the file ONNX Runtime loads."""
    write_json(
        root / BUNDLE_META,
        {
            "task": task.describe(),
            "input_names": list(input_names),
            "input_shapes": dict(input_shapes or {}),
            "max_length": max_length,
            "max_positions": max_positions,
            "label_names": list(label_names),
            "runtimes": {r: runtime_file(r, precision) for r in runtimes},
            "target": dict(target) if target else None,
        },
    )


def record_default(root: Path, default: Mapping[str, Any], *, drop: Sequence[str] = ()) -> None:
    """``bundle.json``'s ``default`` (what ``load(dir)`` opens: the selection's choice); the files in
    ``drop`` leave the bundle (``select.keep = "chosen"``; never the fp32 export) and so do the
    runtimes whose model they were."""
    root = Path(root)
    meta = read_bundle_meta(root)
    for rel in drop:
        if rel != "model.onnx":
            for path in (root / rel, (root / rel).with_suffix(".bin")):
                path.unlink(missing_ok=True)
    meta["runtimes"] = {r: f for r, f in meta["runtimes"].items() if (root / f).is_file()}
    meta["default"] = dict(default)
    write_json(root / BUNDLE_META, meta)


#: targets already warned about in this process (``load()`` warns once per target)
_WARNED_TARGETS: set[str] = set()


def check_target(meta: Mapping[str, Any], *, strict: bool = False) -> list[str]:
    """The instruction flags of the bundle's target that this CPU lacks. A bundle pressed for another
    CPU runs here, but with other kernels (int8 weights that saturate on a CPU without VNNI) and other
    timings than its report shows: warned once per target, refused with ``strict``."""
    described = meta.get("target")
    if not described:  # bundles from before targets were recorded
        return []
    target = Target.from_dict(described)
    missing = missing_flags(target)
    if missing:
        message = (
            f"this bundle was pressed for the {target.name} CPU level; this CPU lacks "
            f"{', '.join(missing)}: its int8 results and timings may differ from its report"
        )
        if strict:
            raise BadInputError(f"{message} (strict=True)")
        if target.name not in _WARNED_TARGETS:
            _WARNED_TARGETS.add(target.name)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
    return missing


def bundle_model_file(meta: dict[str, Any], runtime: str | None) -> tuple[str, str]:
    """(runtime, model file) of a bundle: ``runtime``, or the bundle's first one."""
    files = meta.get("runtimes") or {"onnxruntime": INT8_MODEL}  # bundles from before runtimes were listed
    runtime = runtime or next(iter(files))
    if runtime not in files:
        raise BadInputError(
            f"this bundle has no {runtime} model (it was built for {', '.join(files)}; "
            f"add it to validate.runtimes and run again)"
        )
    return runtime, files[runtime]


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

    def __init__(
        self,
        root: Path,
        *,
        model_file: str | None = None,
        runtime: str | None = None,
        threads: int = 0,
        verify: bool = True,
        name: str | None = None,
        runner_options: dict[str, Any] | None = None,
        allow_failed: bool = False,
        require_signature: str | Path | None = None,
        strict: bool = False,
        back_to_back: bool | None = None,
        task: Any,
        every_api: Callable[[], Iterable[str]] = tuple,
    ):
        self.root = Path(root)
        # which model opens comes from bundle.json, read here and hashed below before anything is used
        meta = read_bundle_meta(self.root)
        default = meta.get("default") if runtime is None and model_file is None else None
        try:
            chosen: str | None = model_file or (default["file"] if default else bundle_model_file(meta, runtime)[1])
        except BadInputError:  # said again below, after the manifest check (which then hashes every file)
            chosen = None
        _prove(self.root, verify=verify, allow_failed=allow_failed, require_signature=require_signature, model=chosen)
        check_target(meta, strict=strict)
        modality = get_modality(task.modality)
        preprocessor = modality.load_deployed(self.root / modality.preprocessor_dir)
        self.meta = meta
        if default:  # the selection's choice (validate.select): its runtime, file and runner options
            runtime, listed, name = default["runtime"], default["file"], name or default["name"]
            runner_options = {**(default.get("options") or {}), **(runner_options or {})}
        else:
            runtime, listed = bundle_model_file(meta, runtime)
        model_file = model_file or listed
        # a runtime's listed model is named for it: the pressed file by its precision on ONNX Runtime,
        # "<precision>-onnxruntime-genai" on GenAI (the same file), "int8-openvino" for the IR
        name = name or (
            bundle_model_name(runtime, model_file)
            if model_file == listed
            else precision_of_file(model_file) or model_file
        )
        if task.runs_back_to_back if back_to_back is None else back_to_back:
            runner_options = {**RUNTIMES.get(runtime).back_to_back_options, **(runner_options or {})}
        runner = create_runner(runtime, self.root / model_file, threads=threads, name=name, **(runner_options or {}))
        runner.__enter__()
        # inputs are truncated to what the model can take, whatever bundle.json says
        limit = meta.get("max_positions") or modality.position_limit(None, preprocessor)
        length = int(meta["max_length"]) if not limit else min(int(meta["max_length"]), int(limit))
        encoder = modality.encoder(
            preprocessor, input_names=runner.input_names, max_length=length, input_shapes=meta.get("input_shapes")
        )
        self._every_api = every_api  # every task's API methods, for __getattr__'s message
        super().__init__(runner, task, encoder, name=name, runtime=runtime)

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
            task = self.__dict__.get("task")
            if task is not None and name in self.__dict__.get("_every_api", tuple)():
                raise BadInputError(f"this bundle is a {task.name} model; use {' / '.join(f'{m}()' for m in task.api)}")
        raise AttributeError(name)

    def _texts(self, texts: Any, *, words: bool = False) -> list[Any]:
        """One input or a list of them (a bare string is one text, never its characters; a list of
        strings inside the list is one text's words). Anything else is a TypeError naming the
        method's argument, not the tokenizer's own error from deep inside it. ``words``: the task
        reads a result per word (a tagger), so a list of words stays one; else it is joined into
        its text as the encoder would, since the encoder reads a long word list in several windows,
        which only a per-word task puts back together."""
        where = f"{self.task.api[0]}()" if getattr(self, "task", None) is not None and self.task.api else "texts"
        if isinstance(texts, str):
            return [texts]
        if (
            texts is None
            or isinstance(texts, (bytes, bytearray, int, float, complex, Mapping))
            or not hasattr(texts, "__iter__")
        ):
            raise TypeError(f"{where}: texts must be a string or a list of strings, got {type(texts).__name__}")
        out = list(texts)
        for i, text in enumerate(out):
            word_list = isinstance(text, (list, tuple)) and all(isinstance(w, str) for w in text)
            if not (isinstance(text, str) or word_list):
                raise TypeError(
                    f"{where}: texts[{i}] must be a string (or a list of words), got {type(text).__name__} {text!r:.40}"
                )
        return out if words else [t if isinstance(t, str) else " ".join(t) for t in out]


def opened_with(model: str, manifest: dict[str, Any]) -> set[str]:
    """The listed files that open with ``model``: it, its weights beside it (``<model>.data``, an IR's ``.bin``)
    and, for a model in a folder (an OpenVINO IR, an OpenVINO GenAI folder), that folder's files."""
    path = Path(model)
    return {
        rel
        for rel in manifest["files"]
        if rel.startswith(model)
        or Path(rel).with_suffix("") == path.with_suffix("")
        or (path.parent != Path(".") and path.parent in Path(rel).parents)
    }


def _prove(
    root: Path, *, verify: bool, allow_failed: bool, require_signature: str | Path | None, model: str | None = None
) -> None:
    """The checks before loading: the signature, the manifest, the verdict (BadInputError, one line).
    ``model``: the model file that will open; the bundle's other large models are checked by size."""
    if require_signature is not None:  # first: it vouches for the manifest the other checks read
        if not isinstance(require_signature, (str, os.PathLike)):
            raise TypeError(
                "load(): require_signature must be the path of the signer's public key (PEM), got "
                f"{type(require_signature).__name__} {require_signature!r:.40}"
            )
        verify_signature(root, Path(require_signature), flag="require_signature=")
    if verify:  # a bundle is what its manifest says, or it is not loaded
        manifest = require_intact(root, opened=None if model is None else opened_with(model, read_manifest(root)))
    elif (root / MANIFEST).is_file():  # unverified (a run's own staging folder has no manifest yet)
        manifest = read_manifest(root)
    else:
        return
    if not allow_failed:
        require_not_failed(root, manifest)
