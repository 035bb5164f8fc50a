"""PyTorch eager runner: the fp32 teacher (and fp16 on GPU) as validation's reference."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from modelpress.runtimes.base import Runner


class TorchRunner(Runner):
    """Runs an in-memory HF model; the task picks its output tensor (``Task.torch_output``)."""

    def __init__(
        self,
        model,
        *,
        input_names: tuple[str, ...],
        task,
        threads: int = 0,
        device: str = "cpu",
        dtype=None,
        name: str = "pytorch-fp32",
    ):
        self.model = task.torch_module(model)
        # a task's module may say what it takes (a decoder's own cache layout)
        self._inputs = tuple(getattr(self.model, "input_names", None) or input_names)
        self.output_name = task.output_name
        self.output_fn = task.torch_output
        self.threads = threads
        self.device = device
        self.dtype = dtype
        self.name = name

    def _load(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model.to(self.device)
        if self.dtype is not None:
            self.model.to(self.dtype)
        self.model.eval()

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            inputs = {
                k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in self.select(feed).items()
            }
            out = self.output_fn(self.model(**inputs))
            if self.device != "cpu":
                torch.cuda.synchronize()
            if isinstance(out, Mapping):  # a task whose model gives several named outputs
                return {k: v.float().cpu().numpy() for k, v in out.items()}
            return {self.output_name: out.float().cpu().numpy()}
