"""The eval record every task's reader returns (``Task.read_eval``): the shared fields; each task's
record subclasses it. Its own module so the readers (``tasks/evalsets`` …) and the task base class
import it without a cycle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class EvalSet:
    """What every task's eval record shares (the record a task's ``read_eval`` returns subclasses it
    and adds the task's own fields: gold labels, pairs, tagged words, windows, ...). Nothing outside
    a task's modules reads those fields: validation, the report and the gate ask the task."""

    source: str = ""
    format: str = "text"
    skipped: int = 0  # rows skipped by the documented rule (empty texts)

    @property
    def examples(self) -> tuple:
        """What the model is run on (texts, word lists, images, windows, pairs)."""
        raise NotImplementedError

    @property
    def n(self) -> int:
        return len(self.examples)

    @property
    def has_gold(self) -> bool:
        return False

    def counts(self) -> dict[str, Any]:
        """The record's own counts, for the report's ``eval``."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The report's ``eval``: the shared keys, then the record's :meth:`counts`."""
        return {
            "source": self.source,
            "format": self.format,
            "num_examples": self.n,
            **self.counts(),
            "skipped": self.skipped,
        }
