"""The deployable bundle's Python API: ``load(bundle_dir)`` → the task's methods on raw inputs.

``load`` reads ``bundle.json`` (the configured task, input names, length limit, the model file of
each runtime the bundle was built for), the preprocessor folder and the int8 model, and returns the
task's bundle class (``embed`` for feature extraction, ``classify`` for classifiers, ``tag`` for
token classification), all through the same Predictor path validation measures. The runner comes
from the runtime registry: the bundle's first runtime (ONNX Runtime unless ``validate.runtimes``
said otherwise), or the one ``runtime=`` names (``"openvino"`` for ``openvino/model.xml``).

Before the model is loaded the bundle proves itself: every file matches ``manifest.json`` (a folder
without one is refused), its verdict is not ``fail`` (a run whose gate failed is published to
``<name>.rejected/``; ``allow_failed=True`` opens it for inspection), and with
``require_signature=PUBLIC_KEY_PEM`` its ``model.sig`` verifies against that key (``modelpress sign``;
the optional ``model-signing`` package) — a model swapped and re-hashed in the manifest passes the
checksums but not the signature. ``bundle.json`` records the CPU target the bundle was pressed for
(``runtimes.target``); on a CPU without that level's instructions ``load`` warns once, or refuses
with ``strict=True``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from modelpress.errors import BadInputError
from modelpress.inference import Predictor
from modelpress.modalities import get_modality
from modelpress.paths import BUNDLE_JSON, MODEL_INT8_ONNX
from modelpress.runtimes.artifacts import BUNDLE_RUNTIMES, bundle_model_name
from modelpress.runtimes.registry import create_runner
from modelpress.tasks import task_from_dict

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
) -> None:
    from modelpress.fileio import write_json

    write_json(
        root / BUNDLE_META,
        {
            "task": task.describe(),
            "input_names": list(input_names),
            "input_shapes": dict(input_shapes or {}),
            "max_length": max_length,
            "max_positions": max_positions,
            "label_names": list(label_names),
            "runtimes": {r: BUNDLE_RUNTIMES[r] for r in runtimes},
            "target": dict(target) if target else None,
        },
    )


def record_default(root: Path, default: Mapping[str, Any], *, drop: Sequence[str] = ()) -> None:
    """``bundle.json``'s ``default`` (what ``load(dir)`` opens: the selection's choice); the files in
    ``drop`` leave the bundle (``select.keep = "chosen"``; never the fp32 export) and so do the
    runtimes whose model they were."""
    from modelpress.fileio import write_json

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
    from modelpress.runtimes.target import Target, missing_flags

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
    ):
        self.root = Path(root)
        _prove(self.root, verify=verify, allow_failed=allow_failed, require_signature=require_signature)
        meta = read_bundle_meta(self.root)
        check_target(meta, strict=strict)
        task = task_from_dict(meta["task"])
        modality = get_modality(task.modality)
        preprocessor = modality.load_deployed(self.root / modality.preprocessor_dir)
        self.meta = meta
        default = meta.get("default") if runtime is None and model_file is None else None
        if default:  # the selection's choice (validate.select): its runtime, file and runner options
            runtime, listed, name = default["runtime"], default["file"], name or default["name"]
            runner_options = {**(default.get("options") or {}), **(runner_options or {})}
        else:
            runtime, listed = bundle_model_file(meta, runtime)
        model_file = model_file or listed
        # a runtime's own bundle model is named for the runtime (onnxruntime-genai's is model.int8.onnx too)
        name = name or (
            bundle_model_name(runtime, model_file)
            if model_file == listed
            else "int8"
            if model_file == INT8_MODEL
            else model_file
        )
        runner = create_runner(runtime, self.root / model_file, threads=threads, name=name, **(runner_options or {}))
        runner.__enter__()
        # inputs are truncated to what the model can take, whatever bundle.json says
        limit = meta.get("max_positions") or modality.position_limit(None, preprocessor)
        length = int(meta["max_length"]) if not limit else min(int(meta["max_length"]), int(limit))
        encoder = modality.encoder(
            preprocessor, input_names=runner.input_names, max_length=length, input_shapes=meta.get("input_shapes")
        )
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
            from modelpress.tasks import TASKS

            task = self.__dict__.get("task")
            if task is not None and any(name in TASKS.get(t).api for t in TASKS.names()):
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


def _prove(root: Path, *, verify: bool, allow_failed: bool, require_signature: str | Path | None) -> None:
    """The checks before loading: the signature, the manifest, the verdict (BadInputError, one line)."""
    from modelpress.manifest import MANIFEST, read_manifest, require_intact, require_not_failed

    if require_signature is not None:  # first: it vouches for the manifest the other checks read
        from modelpress.signing import verify_signature

        if not isinstance(require_signature, (str, os.PathLike)):
            raise TypeError(
                "load(): require_signature must be the path of the signer's public key (PEM), got "
                f"{type(require_signature).__name__} {require_signature!r:.40}"
            )
        verify_signature(root, Path(require_signature), flag="require_signature=")
    if verify:  # a bundle is what its manifest says, or it is not loaded
        manifest = require_intact(root)
    elif (root / MANIFEST).is_file():  # unverified (a run's own staging folder has no manifest yet)
        manifest = read_manifest(root)
    else:
        return
    if not allow_failed:
        require_not_failed(root, manifest)


def load(
    bundle_dir: str | Path,
    *,
    runtime: str | None = None,
    model_file: str | None = None,
    threads: int = 0,
    verify: bool = True,
    allow_failed: bool = False,
    require_signature: str | Path | None = None,
    strict: bool = False,
    **runner_options: Any,
) -> Bundle:
    """The bundle at ``bundle_dir``, as its task's bundle class (methods: ``task.api``).
    ``runtime``: one the bundle was built for (``bundle.json`` lists them; default its first);
    ``runner_options`` go to that runner (OpenVINO: ``precision="bf16"``).
    ``verify``: check every file against ``manifest.json`` first (a missing manifest, a changed,
    added or missing file is an error); validation turns it off for the run's own unpublished
    staging folder. ``allow_failed``: open a bundle whose gate failed (``<name>.rejected/``), for
    inspection; refused otherwise. ``require_signature``: the signer's public key (PEM); the
    bundle's ``model.sig`` must verify against it (``modelpress sign``) before the model is loaded.
    ``strict``: refuse a bundle pressed for a CPU level whose instructions this CPU lacks (else a
    warning, once per target)."""
    meta = read_bundle_meta(Path(bundle_dir))
    cls = task_from_dict(meta["task"]).bundle_class()
    return cls(
        Path(bundle_dir),
        model_file=model_file,
        runtime=runtime,
        threads=threads,
        verify=verify,
        runner_options=runner_options,
        allow_failed=allow_failed,
        require_signature=require_signature,
        strict=strict,
    )
