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

PRECISIONS = ("int8", "fp16", "both")
TIMING_CACHE_NAME = "timing.cache"  # default cache file inside the run folder


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
                    f"got {low}/{opt}/{high}")
        if self.workspace_mb < 1:
            raise BadInputError(f"engine.workspace_mb: must be >= 1, got {self.workspace_mb}")
        level = self.builder_optimization_level
        if level is not None and not 0 <= level <= 5:
            raise BadInputError(f"engine.builder_optimization_level: must be 0..5, got {level}")

    @property
    def precisions(self) -> tuple[str, ...]:
        """The engines to build, int8 first (it is the one the gate judges)."""
        return ("int8", "fp16") if self.precision == "both" else (self.precision,)

    def profile(self, input_names: tuple[str, ...]) -> dict[str, dict[str, tuple[int, int]]]:
        """One optimization profile: ``{input: {"min": (b, s), "opt": ..., "max": ...}}``.

        Every text-model input (input_ids, attention_mask, token_type_ids) is [batch, seq].
        """
        shapes = {"min": (self.min_batch, self.min_seq), "opt": (self.opt_batch, self.opt_seq),
                  "max": (self.max_batch, self.max_seq)}
        return {name: dict(shapes) for name in input_names}

    def timing_cache_path(self, run_dir: Path) -> Path | None:
        """Where the timing cache lives for this run folder, or None when disabled."""
        if self.timing_cache is True:
            return run_dir / TIMING_CACHE_NAME
        if self.timing_cache is False:
            return None
        return Path(self.timing_cache)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, base_dir: Path) -> "EngineConfig":
        """Build from a recipe's ``[engine]`` table; relative paths resolve against ``base_dir``.

        Raises :class:`BadInputError` naming ``engine.<key>`` for an unknown key or a bad value.
        """
        d = dict(d or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise BadInputError(
                f"engine.{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            kwargs[key] = _coerce(key, value, base_dir=base_dir)
        return cls(**kwargs)


_INT_KEYS = ("min_batch", "opt_batch", "max_batch", "min_seq", "opt_seq", "max_seq", "workspace_mb")


def _coerce(key: str, value: Any, *, base_dir: Path) -> Any:
    """Type-check one recipe value (TOML gives bool/int/str); bool is not accepted as an int."""
    if key == "enabled":
        if not isinstance(value, bool):
            raise BadInputError(f"engine.enabled: expected true or false, got {value!r}")
        return value
    if key == "precision":
        if not isinstance(value, str):
            raise BadInputError(f"engine.precision: expected a string, got {value!r}")
        return value
    if key in _INT_KEYS or key == "builder_optimization_level":
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadInputError(f"engine.{key}: expected an integer, got {value!r}")
        return value
    if key == "timing_cache":
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, Path)) and str(value):
            path = Path(value).expanduser()
            return path if path.is_absolute() else (base_dir / path).resolve()
        raise BadInputError(f"engine.timing_cache: expected true, false or a file path, got {value!r}")
    raise BadInputError(f"engine.{key}: unknown key")  # unreachable: from_dict filters keys
