"""Typed errors and the one place that maps them to process exit codes.

Every stage raises one of these; ``modelpress.cli`` turns them into a one-line
message on stderr and the exit code below. Anything else is an internal error.
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3


class ModelpressError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code = EXIT_INTERNAL


class BadInputError(ModelpressError):
    """A file, recipe key, CLI argument or data set is missing or malformed."""

    exit_code = EXIT_BAD_INPUT


class ParityError(ModelpressError):
    """An exported or optimized graph disagrees with its reference beyond tolerance."""

    exit_code = EXIT_INTERNAL


class BackendUnavailableError(ModelpressError):
    """An optional backend (TensorRT, a GPU, onnxruntime-gpu) is not installed or usable here."""

    exit_code = EXIT_BAD_INPUT


#: operating-system faults a user causes (a full disk, a read-only or forbidden folder, a file
#: where a folder is expected): one line and exit 2, not a traceback
USER_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.EFBIG,
        errno.ENAMETOOLONG,
    }
)


def user_fault(exc: BaseException) -> str | None:
    """The one-line message for an environment fault the user can fix, else None (a bug)."""
    if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return "ran out of memory (is a data file far larger than expected, or not a text file?)"
    return None


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an exception escaping a CLI command."""
    if isinstance(exc, ModelpressError):
        return exc.exit_code
    return EXIT_INTERNAL
