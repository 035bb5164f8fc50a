"""Calibration and evaluation data: the corpora the project ships and the loaders for users' files.

The shipped corpora (written for the project, no third-party text) are package data of
``modelpress.calibration_data``; recipes name them as ``calibration_data/<file>``, which
:func:`shipped_path` finds through ``importlib.resources`` wherever the package is installed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: how recipes and defaults name a shipped corpus
SHIPPED_PREFIX = "calibration_data/"


def shipped_path(value: str) -> Path | None:
    """The installed file a ``calibration_data/<name>`` value names, or None when it is not one."""
    if not value.startswith(SHIPPED_PREFIX):
        return None
    resource = resources.files(__name__).joinpath(value[len(SHIPPED_PREFIX) :])
    if not resource.is_file():
        return None
    return Path(str(resource))
