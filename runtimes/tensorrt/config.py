"""The ``[engine]`` recipe table: how ``modelpress engine`` builds TensorRT engines.

Place in the pipeline: the recipe loader hands the ``[engine]`` table to
:meth:`EngineConfig.from_dict`; the engine stage (``runtimes.tensorrt.stage``) and the ORT
TensorRT-EP runner read the result. Keys (all optional; the defaults suit the packaged MiniLM):

``enabled``                   build engines as part of ``modelpress run`` (``engine`` always builds)
``precision``                 ``"int8"`` (from ``model.int8.onnx``), ``"fp16"`` (from ``model.onnx``
                              converted to fp16), or ``"both"``
``min_batch`` / ``opt_batch`` / ``max_batch``   batch range of the optimization profile
``min_seq`` / ``opt_seq`` / ``max_seq``         sequence-length range of the optimization profile
``workspace_mb``              builder workspace memory pool limit, MiB
``timing_cache``              ``true``: keep ``timing.cache`` in the run folder; ``false``: none;
                              a path: that file (relative to the recipe's folder), e.g. to share
                              one cache between runs on the same GPU
``builder_optimization_level`` 0..5; higher builds slower and may run faster (TensorRT default 3)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from modelpress.errors import BadInputError
from modelpress.paths import TIMING_CACHE
from modelpress.config_check import PathRule, check_section

PRECISIONS = ("int8", "fp16", "both")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Validated engine-build settings. See the module docstring for what each key means."""

    enabled: bool = False  # engines need a GPU + TensorRT; off so `run` works on CPU machines
    precision: str = "int8"  # the deployable artifact; fp16 is the accuracy/speed reference
    min_batch: int = 1
    opt_batch: int = 8  # tactics are tuned for opt; a typical online batch
    max_batch: int = 32
    min_seq: int = 1
    opt_seq: int = 128  # a typical sentence pair after tokenization
    max_seq: int = 512  # BERT-family position-embedding limit
    workspace_mb: int = 4096  # enough for BERT-base tactics; well under any data-center GPU
    timing_cache: bool | Path = True  # True: <run_dir>/timing.cache; False: none; Path: that file
    builder_optimization_level: int | None = None  # None: TensorRT's default (3)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BadInputError(f"engine.precision: '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        for prefix in ("batch", "seq"):
            low, opt, high = (getattr(self, f"{p}_{prefix}") for p in ("min", "opt", "max"))
            if not 1 <= low <= opt <= high:
                raise BadInputError(
                    f"engine.min_{prefix}/opt_{prefix}/max_{prefix}: need 1 <= min <= opt <= max, "
                    f"got {low}/{opt}/{high}"
                )
        if self.workspace_mb < 1:
            raise BadInputError(f"engine.workspace_mb: must be >= 1, got {self.workspace_mb}")
        level = self.builder_optimization_level
        if level is not None and not 0 <= level <= 5:
            raise BadInputError(f"engine.builder_optimization_level: must be 0..5, got {level}")

    @property
    def precisions(self) -> tuple[str, ...]:
        """The engines to build, int8 first (it is the one the gate judges)."""
        return ("int8", "fp16") if self.precision == "both" else (self.precision,)

    def timing_cache_path(self, run_dir: Path) -> Path | None:
        """Where the timing cache lives for this run folder, or None when disabled."""
        if self.timing_cache is True:
            return run_dir / TIMING_CACHE  # the default: inside the run folder
        if self.timing_cache is False:
            return None
        return Path(self.timing_cache)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, base_dir: Path) -> "EngineConfig":
        """The ``[engine]`` table on its own; a relative ``timing_cache`` that exists in ``base_dir``
        resolves there (the recipe loader applies its one path rule)."""

        return check_section(cls, "engine", dict(d or {}), rule=PathRule((Path(base_dir),)))
