"""SIGINT and SIGTERM end a run the same way: staging removed, the previous bundle untouched.

Python turns SIGINT into ``KeyboardInterrupt``; SIGTERM (what ``kill``, CI timeouts and container
stops send) would end the process without unwinding, leaving a staging folder behind. Here it
raises :class:`Terminated` instead, so every ``finally`` / cleanup handler runs, and the CLI exits
with the conventional ``128 + signal`` codes: 130 (SIGINT) and 143 (SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so ``except Exception`` lets it pass)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
