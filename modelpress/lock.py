"""One run at a time per bundle: an OS file lock on ``<out>/.<name>.lock``.

The lock covers everything a run of ``<name>`` publishes: ``<out>/<name>`` when its gate passes and
``<out>/<name>.rejected`` when it fails (``modelpress.paths``).

Two ``modelpress run`` into the same ``--out`` with the same recipe name would otherwise stage and
publish over each other (measured before this lock: a published bundle holding one run's metrics
and the other's ``model.onnx``). The second run does not wait: it exits 2 at once with one line
naming the lock and the process holding it, so CI jobs fail loudly instead of queueing silently.
The lock is an ``flock`` on an open file, so it dies with the process that holds it (a killed run
never leaves a stale lock).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from modelpress.errors import BadInputError
import fcntl


def lock_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f".{name}.lock"


@contextlib.contextmanager
def bundle_lock(out_dir: Path, name: str) -> Iterator[Path]:
    """Hold the lock of bundle ``name`` in ``out_dir`` for the block; BadInputError if taken."""

    path = lock_path(out_dir, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise BadInputError(
                f"{out_dir / name}: another modelpress run is writing this bundle "
                f"(lock {path} held by pid {holder}); wait for it or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
