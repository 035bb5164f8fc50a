"""Raw examples in, task output out: modality encoder → runner → task post-processing.

The deployable path: the bundle's int8 model (``modelpress.bundle.load``), the fp32 ONNX model and
the PyTorch teacher all go through this same code, so what validation measures is what users get.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np

from modelpress.errors import BadInputError
from modelpress.modalities import Batch, Encoder
from modelpress.runtimes.base import Runner


class Predictor:
    def __init__(
        self, runner: Runner, task: Any, encoder: Encoder, *, name: str | None = None, runtime: str = "onnxruntime"
    ):
        self.runner = runner
        self.task = task
        self.encoder = encoder
        self.name = name or runner.name
        self.runtime = runtime  # the runtime registry's name of the runner

    def encode(self, examples: Sequence[Any], *, pad_to: int | None = None) -> Batch:
        return self.encoder.encode(examples, pad_to=pad_to)

    def predict_batch(self, batch: Batch):
        return self.task.postprocess(self.runner.run(batch.feed), batch)

    def predict(self, examples: Sequence[Any], *, batch_size: int = 32):
        """One result per example, in input order (an array with a row per example, or a list when
        the task's results differ in size); batches group examples of similar size."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise TypeError(f"batch_size must be an integer, got {type(batch_size).__name__} {batch_size!r}")
        if batch_size < 1:
            raise BadInputError(f"batch_size must be ≥ 1, got {batch_size}")
        examples = list(examples)
        if not examples:  # nothing says the result's width here; the bundle's methods give [0, width]
            return np.zeros((0,), dtype=np.float32)
        order = np.argsort(self.encoder.lengths(examples), kind="stable")
        results: list[Any] = [None] * len(examples)
        arrays = True
        for start in range(0, len(examples), batch_size):
            idx = order[start : start + batch_size]
            out = self.predict_batch(self.encode([examples[i] for i in idx]))
            arrays = arrays and isinstance(out, np.ndarray)
            # strict: a task whose post-processing gave more rows than examples (a long word list
            # read in windows) must not hand one example's window to the next example
            for i, row in zip(idx, out, strict=True):
                results[i] = row
        return np.stack(results) if arrays else results
