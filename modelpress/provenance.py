"""Where a pressed model came from, for the manifest: the hub commit a hub id resolved to, and the
sha256 of every weight file read.

A hub id is fetched as a snapshot of one commit (:func:`hub_snapshot`: the weights as safetensors,
the config and preprocessor files, no pickles or other formats), so the run reads a local folder
like any other and the manifest can name the commit (the snapshot folder of the hub cache is named
by it). A local folder has no commit to name: its weight files' sha256 are what identifies it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from modelpress.errors import BadInputError
from modelpress.manifest import sha256

log = logging.getLogger(__name__)

#: what a snapshot fetches: configs, tokenizer / processor files, safetensors weights, remote code
SNAPSHOT_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.py")
#: the files whose sha256 the manifest records
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def hub_snapshot(repo_id: str, revision: str | None, *, offline: bool) -> str:
    """The local folder of ``repo_id`` at ``revision`` (default branch when None), fetched into the
    hub cache unless ``offline`` (then it must be cached)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RevisionNotFoundError

    try:
        return snapshot_download(
            repo_id, revision=revision, allow_patterns=list(SNAPSHOT_PATTERNS), local_files_only=offline
        )
    except RevisionNotFoundError:
        raise BadInputError(f"model '{repo_id}': the hub has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        raise BadInputError(
            f"model '{repo_id}'" + (f" at revision {revision!r}" if revision else "") + ": not in the hub cache "
            "and HF_HUB_OFFLINE is set (HF_HUB_OFFLINE=0 on a machine with the network, or give a folder)"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"model '{repo_id}': cannot fetch it from the hub ({first})") from None


def snapshot_commit(folder: str | Path) -> str | None:
    """The commit a hub-cache snapshot folder holds (``.../snapshots/<sha>``), else None."""
    folder = Path(folder)
    if folder.parent.name == "snapshots" and len(folder.name) == 40:
        return folder.name
    return None


def weight_files(folder: str | Path) -> dict[str, str]:
    """{path relative to ``folder``: sha256} of every weight file in it (sub-folders included)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return {str(p.relative_to(folder)): sha256(p.resolve()) for p in found}


def model_source(written: str, resolved: str, *, revision: str | None = None) -> dict[str, Any]:
    """What the manifest says of one model: the reference as written, the revision asked for, the
    commit it resolved to (hub ids), and the sha256 of its weight files."""
    log.info("recording the sha256 of %s's weight files", written)
    return {
        "ref": written,
        "revision": revision,
        "commit": snapshot_commit(resolved),
        "weights": weight_files(resolved),
    }
